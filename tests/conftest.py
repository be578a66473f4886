import os
import sys
from pathlib import Path

import pytest

# The tests' networks are tiny: a second thread per process (and per stage process the tests
# start, which inherit this) costs more CPU than it saves. A value set by the caller wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the thread count is set)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
# Every fixture lives in the repository (tests/fixtures/README.md says how each was made).
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN_G = FIXTURES / "stylegan2-tiny-a"
GOLDEN_ALIGN = FIXTURES / "align"
GOLDEN_ROBUST = FIXTURES / "robust-tiny-a"
FACES = FIXTURES / "faces"

sys.path.insert(0, str(Path(__file__).resolve().parent))


# A test may skip only for what this machine lacks, and says which with one of these prefixes.
# Under RECON_CI=1 (.ci/run) any other skip (a missing fixture, Chromium, git) fails the run.
ALLOWED_SKIPS = ("needs CUDA", "needs NVIDIA's checkout")
_skips: dict = {}


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        _skips[report.nodeid] = reason


def _disallowed_skips() -> dict:
    return {k: r for k, r in _skips.items() if not r.startswith(ALLOWED_SKIPS)}


def pytest_terminal_summary(terminalreporter):
    if not _skips:
        return
    counts: dict = {}
    for reason in _skips.values():
        kind = next((a for a in ALLOWED_SKIPS if reason.startswith(a)), "other")
        counts[kind] = counts.get(kind, 0) + 1
    terminalreporter.write_line("skips by cause: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    bad = _disallowed_skips()
    if bad and os.environ.get("RECON_CI"):
        terminalreporter.write_line(f"RECON_CI: {len(bad)} test(s) skipped for something CI must have:", red=True)
        for nodeid, reason in sorted(bad.items()):
            terminalreporter.write_line(f"  {nodeid}: {reason}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("RECON_CI") and _disallowed_skips() and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(autouse=True, scope="session")
def _recon_cache(tmp_path_factory):
    """recon's per-user cache (downloads, the weights store) in a folder of this test session,
    for this process and every stage it starts, so no test reads or fills the real one."""
    old = os.environ.get("RECON_CACHE_DIR")
    os.environ["RECON_CACHE_DIR"] = str(tmp_path_factory.mktemp("recon-cache"))
    yield
    if old is None:
        os.environ.pop("RECON_CACHE_DIR", None)
    else:
        os.environ["RECON_CACHE_DIR"] = old


def make_weights(folder: Path, generator, vgg16=None, resolution: int = 32) -> Path:
    """A download_weights folder (``weights.json``, the networks in the session's store) for the
    generator checkpoint ``generator`` and a VGG16 file (default: the tests' tiny one)."""
    from tiny_vgg import write_tiny_vgg

    from recon.config import parse_params
    from recon.pipeline.download import weights_stage

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vgg16 is None:
        vgg16 = folder / "tiny-vgg16.pt"
        write_tiny_vgg(vgg16)
    params = parse_params({"weights": {"generator": {"source": str(generator)}, "vgg16": {"source": str(vgg16)}},
                           "align": {"resolution": resolution}})
    weights_stage(params, folder)
    return folder


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_G


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


@pytest.fixture(autouse=True)
def _params_file():
    """The params file run-time messages name is the last one this process read (one per stage
    process); a test that reads another does not leave it to the next."""
    from recon import config
    yield
    config._PARAMS_FILE[0] = "params.yaml"


@pytest.fixture
def no_tf32():
    """CUDA convolutions in full float32 (cuDNN's default TF32 rounds inputs to 10 bits): for
    comparisons with float32 references at 1e-4."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def G(golden_dir):
    """The golden tiny generator (32 px), one per test module."""
    import recon
    return recon.load_generator(golden_dir / "G_ema.safetensors")


@pytest.fixture(scope="module")
def vgg():
    """The tests' small feature network with NVIDIA's VGG16 call signature (tiny_vgg.py)."""
    from tiny_vgg import TinyLPIPS
    return torch.jit.script(TinyLPIPS(0).eval())
