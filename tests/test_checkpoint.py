"""Loading official pickles safely, the project's safetensors format, and conversion between them."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from official_format import dumps_official, write_official_pkl
from safetensors.torch import load_file, save_file

import recon
from recon.model.networks import Generator
from recon.model.safe_pickle import CheckpointError


def tiny_generator(seed=0, **synthesis):
    torch.manual_seed(seed)
    kwargs = dict(channel_base=128, channel_max=32)
    kwargs.update(synthesis)
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=kwargs)
    with torch.no_grad():  # non-trivial values everywhere
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


def test_official_pickle_loads_exactly_the_golden_tensors(golden_dir):
    G = recon.load_generator(golden_dir / "official_format.pkl")
    golden = load_file(str(golden_dir / "G_ema.safetensors"))
    own = G.state_dict()
    assert set(own) == set(golden)
    for k, v in golden.items():
        assert torch.equal(own[k], v), k
    assert not G.training and not any(p.requires_grad for p in G.parameters())


def test_official_pickle_reproduces_golden_image(golden_dir, golden_cases):
    G = recon.load_generator(golden_dir / "official_format.pkl")
    torch.testing.assert_close(G.synthesis(golden_cases["ws_mixed"], noise_mode="const"),
                               golden_cases["img_synth_mixed_const"], atol=1e-4, rtol=1e-4)


def test_pkl_to_safetensors_roundtrip_is_identical(golden_dir, golden_cases, tmp_path):
    out = recon.convert(golden_dir / "official_format.pkl", tmp_path / "g.safetensors")
    G1 = recon.load_generator(golden_dir / "official_format.pkl")
    G2 = recon.load_generator(out)
    assert G2.config == G1.config
    ws = golden_cases["ws_mixed"]
    assert torch.equal(G1.synthesis(ws, noise_mode="const"), G2.synthesis(ws, noise_mode="const"))
    assert torch.equal(G1(golden_cases["z"], None, truncation_psi=0.5, noise_mode="const"),
                       G2(golden_cases["z"], None, truncation_psi=0.5, noise_mode="const"))
    with pytest.raises(FileExistsError):
        recon.convert(golden_dir / "official_format.pkl", out)


def test_cli_convert_and_info_and_the_same_bytes_in_every_process(golden_dir, tmp_path):
    """The same pickle converts to the same bytes whatever the process (the safetensors
    library's metadata order changes between processes; the header is written again sorted)."""
    import os
    outs = [tmp_path / f"g{seed}.safetensors" for seed in (1, 2)]
    for seed, out in zip((1, 2), outs):
        res = subprocess.run([sys.executable, "-m", "recon.cli", "convert", str(golden_dir / "official_format.pkl"),
                              str(out)], capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED=str(seed)))
        assert res.returncode == 0, res.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert recon.convert(golden_dir / "official_format.pkl", tmp_path / "g3.safetensors").read_bytes() == \
        outs[0].read_bytes()
    res = subprocess.run([sys.executable, "-m", "recon.cli", "info", str(outs[0])], capture_output=True, text=True)
    assert json.loads(res.stdout)["num_ws"] == 8
    res = subprocess.run([sys.executable, "-m", "recon.cli", "convert", str(golden_dir / "official_format.pkl"),
                          str(outs[0])], capture_output=True, text=True)
    assert res.returncode == 1 and "already exists" in res.stderr


def test_written_files_follow_the_umask(golden_dir, tmp_path):
    import os

    from recon.data.imageio import save_png
    old = os.umask(0o027)
    try:
        out = recon.convert(golden_dir / "official_format.pkl", tmp_path / "g.safetensors")
        png = save_png(tmp_path / "x.png", __import__("numpy").zeros((2, 2, 3), "uint8"))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o640 and png.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("synthesis", [
    dict(architecture="skip"),
    dict(architecture="orig"),
    dict(architecture="resnet", conv_clamp=256),
    dict(architecture="skip", num_fp16_res=2, conv_clamp=256),
])
@pytest.mark.parametrize("protocol", [3, 4])
def test_self_built_official_pickles_of_every_architecture(tmp_path, synthesis, protocol):
    G = tiny_generator(**synthesis)
    write_official_pkl(tmp_path / "net.pkl", G, protocol=protocol)
    G2 = recon.load_generator(tmp_path / "net.pkl")
    for k in ("architecture", "conv_clamp"):
        assert G2.config["synthesis_kwargs"].get(k) == synthesis.get(k, G2.config["synthesis_kwargs"][k])
    assert G2.config["synthesis_kwargs"]["num_fp16_res"] == synthesis.get("num_fp16_res", 0)
    z = torch.randn(3, 16)
    assert torch.equal(G(z, None, noise_mode="const"), G2(z, None, noise_mode="const"))
    # convert -> load gives the same again
    recon.convert(tmp_path / "net.pkl", tmp_path / "net.safetensors")
    G3 = recon.load_generator(tmp_path / "net.safetensors")
    assert torch.equal(G(z, None, noise_mode="const"), G3(z, None, noise_mode="const"))


def test_stylegan3_repository_layout_with_flat_synthesis_kwargs(tmp_path):
    """The NGC files come from the stylegan3 repository: synthesis kwargs flat in _init_kwargs,
    conv_clamp 256 and 4 fp16 resolutions."""
    G = tiny_generator(conv_clamp=256, num_fp16_res=4)
    write_official_pkl(tmp_path / "sg3.pkl", G, flat_synthesis_kwargs=True)
    G2 = recon.load_generator(tmp_path / "sg3.pkl")
    sk = G2.config["synthesis_kwargs"]
    assert (sk["channel_base"], sk["channel_max"], sk["conv_clamp"], sk["num_fp16_res"]) == (128, 32, 256.0, 4)
    z = torch.randn(2, 16)
    assert torch.equal(G(z, None, noise_mode="const"), G2(z, None, noise_mode="const"))


def test_conditional_generator_pickle(tmp_path):
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=4, w_dim=8, img_resolution=8, img_channels=3,
                  mapping_kwargs=dict(num_layers=3), synthesis_kwargs=dict(channel_base=64, channel_max=16)).eval()
    write_official_pkl(tmp_path / "c.pkl", G)
    G2 = recon.load_generator(tmp_path / "c.pkl")
    z, c = torch.randn(2, 8), torch.eye(4)[:2]
    assert torch.equal(G(z, c, noise_mode="const"), G2(z, c, noise_mode="const"))
    assert G2.config["mapping_kwargs"]["embed_features"] == 8


# ---------------------------------------------------------------------------------------------
# Hostile and broken files: refused with a clear message, and nothing in them runs.

class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _marker_cmd(marker):
    return f"touch {marker}"


def _hostile_payloads(marker):
    import builtins
    yield "os.system", pickle.dumps(_Evil(os.system, _marker_cmd(marker)), protocol=4)
    yield "builtins.eval", pickle.dumps(_Evil(builtins.eval, f"open({str(marker)!r}, 'w')"), protocol=4)
    yield "builtins.exec", pickle.dumps(_Evil(builtins.exec, f"open({str(marker)!r}, 'w')"), protocol=3)
    yield "subprocess.call", pickle.dumps(_Evil(subprocess.call, ["touch", str(marker)]), protocol=2)
    # The evil call hidden inside an otherwise well-formed network dict.
    yield "nested in G_ema", pickle.dumps({"G": None, "G_ema": {"x": _Evil(os.system, _marker_cmd(marker))}})
    # A persistent object whose embedded source would run under a plain pickle.load.
    src = f"import os\nos.system({_marker_cmd(marker)!r})\n"
    blob = dumps_official({"G_ema": tiny_generator()})
    yield "module_src", blob.replace(b"# source omitted", src.encode()[:16].ljust(16, b" "))


def test_hostile_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for label, payload in _hostile_payloads(marker):
        path = tmp_path / f"{label.replace(' ', '_')}.pkl"
        path.write_bytes(payload)
        if label == "module_src":
            # Source text is data to the loader: it loads, and the code in it is never run.
            recon.load_generator(path)
        else:
            with pytest.raises(CheckpointError) as exc:
                recon.load_generator(path)
            assert str(path) in str(exc.value) and "refused global" in str(exc.value), label
        assert not marker.exists(), f"{label}: payload executed"


def test_hostile_global_inside_a_storage_blob(tmp_path):
    """Storage blobs are nested pickles; an evil global there is refused too."""
    marker = tmp_path / "pwned"
    evil_blob = pickle.dumps(_Evil(os.system, _marker_cmd(marker)))

    class _EvilStorage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (evil_blob,)
    # Build it with the real global name torch.storage._load_from_bytes so that the outer level passes.
    path = tmp_path / "blob.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _EvilStorage()}, protocol=4))
    with pytest.raises(CheckpointError, match="refused global"):
        recon.load_generator(path)
    assert not marker.exists()


def test_numpy_object_dtype_is_refused(tmp_path):
    import numpy as np
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"G_ema": np.array([1], dtype=object)[0:1].dtype}, protocol=4))
    with pytest.raises(CheckpointError, match="numeric dtype"):
        recon.load_generator(path)


def test_empty_truncated_and_wrong_pickles(golden_dir, tmp_path):
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pkl: file is empty"):
        recon.load_generator(empty)

    data = (golden_dir / "official_format.pkl").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        trunc = tmp_path / f"trunc{cut}.pkl"
        trunc.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"trunc{cut}\.pkl: .*(truncated|not a readable)"):
            recon.load_generator(trunc)

    no_g = tmp_path / "no_g.pkl"
    no_g.write_bytes(pickle.dumps({"G": None, "D": None}, protocol=3))
    with pytest.raises(CheckpointError, match=r"no_g\.pkl: pickle holds no generator 'G_ema' \(keys: G, D\)"):
        recon.load_generator(no_g)

    not_net = tmp_path / "not_net.pkl"
    not_net.write_bytes(pickle.dumps({"G_ema": [1, 2, 3]}, protocol=3))
    with pytest.raises(CheckpointError, match=r"not_net\.pkl: pickle holds no network"):
        recon.load_generator(not_net)

    with pytest.raises(CheckpointError, match="no such file"):
        recon.load_generator(tmp_path / "missing.pkl")


def test_safetensors_that_do_not_fit_their_config(tmp_path, golden_dir):
    G = tiny_generator()
    good = recon.save_generator(G, tmp_path / "good.safetensors")
    state = load_file(str(good))
    from safetensors import safe_open
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()

    dropped = dict(state)
    dropped.pop("synthesis.b16.conv1.weight")
    save_file(dropped, str(tmp_path / "dropped.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"dropped\.safetensors: tensors do not fit .*missing"):
        recon.load_generator(tmp_path / "dropped.safetensors")

    reshaped = dict(state)
    reshaped["mapping.fc0.weight"] = torch.zeros(3, 3)
    save_file(reshaped, str(tmp_path / "reshaped.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        recon.load_generator(tmp_path / "reshaped.safetensors")

    save_file(state, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="no generator config"):
        recon.load_generator(tmp_path / "bare.safetensors")
    (tmp_path / "bare.json").write_text(json.dumps(G.config))
    G2 = recon.load_generator(tmp_path / "bare.safetensors")
    assert torch.equal(G2.synthesis.b16.conv1.weight, G.synthesis.b16.conv1.weight)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors: not a readable safetensors"):
        recon.load_generator(garbage)

    bad_cfg = tmp_path / "badcfg.safetensors"
    save_file(state, str(bad_cfg), metadata={"recon_config": json.dumps(dict(G.config, synthesis_kwargs=dict(
        G.config["synthesis_kwargs"], channel_base=256)))})
    with pytest.raises(CheckpointError, match="wrong shapes"):
        recon.load_generator(bad_cfg)
