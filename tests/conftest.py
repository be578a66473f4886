import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("RECON_SHARED", ROOT.parent / "shared"))
GOLDEN_G = SHARED / "golden" / "stylegan2-tiny-a"

sys.path.insert(0, str(Path(__file__).resolve().parent))


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared fixture {path} is not available")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return need(GOLDEN_G)


@pytest.fixture(scope="session")
def golden_cases(golden_dir):
    from safetensors.torch import load_file
    return load_file(str(golden_dir / "cases.safetensors"))


@pytest.fixture(scope="session")
def golden_G(golden_dir):
    import recon
    return recon.load_generator(golden_dir / "G_ema.safetensors", config=golden_dir / "config.json")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(False)
    yield


@pytest.fixture
def no_tf32():
    """CUDA convolutions in full float32 (cuDNN's default TF32 rounds inputs to 10 bits): for
    comparisons with float32 references at 1e-4."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
