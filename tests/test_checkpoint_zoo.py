"""A zoo of hostile and broken checkpoints: each is refused with one line that names the file and
the reason, before anything large is allocated (the whole zoo loads in one process under 1.5 GB
of memory and 60 s a file), and none can change recon's own classes."""
import collections
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from official_format import dumps_official, write_official_pkl
from safetensors.torch import save_file

import recon
from recon.errors import CheckpointError
from recon.model.networks import Generator
from recon.model.safe_pickle import EasyDict


def tiny(**kw):
    torch.manual_seed(0)
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                     mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=32, channel_max=8)).eval()


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _safetensors(path, config, state=None):
    G = tiny()
    state = state if state is not None else {k: v.contiguous() for k, v in G.state_dict().items()}
    text = config if isinstance(config, str) else json.dumps(config)
    save_file(state, str(path), metadata={"recon_config": text})


def _nested_modules_pickle(depth: int) -> bytes:
    """A generator whose mapping network is a chain of ``depth`` nested modules, written opcode by
    opcode (a pickler would recurse)."""
    g = b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"

    def s(text):
        b = text.encode()
        return b"X" + len(b).to_bytes(4, "little") + b

    head = (g + b"}(" + s("class_name") + s("Generator") + s("state") + b"}(" + s("_modules") + b"}("
            + s("mapping"))
    tail = b"u" + b"u" + b"u" + b"\x85R"
    return b"\x80\x02}(" + s("G_ema") + head * depth + b"N" + tail * depth + b"u."


def build_zoo(root):
    """``{file name: what the refusal must mention}``."""
    cfg = tiny().config
    zoo = {}

    def variant(name, expect, **changes):
        c = json.loads(json.dumps(cfg))
        for dotted, value in changes.items():
            node = c
            *parents, leaf = dotted.split("__")
            for p in parents:
                node = node[p]
            node[leaf] = value
        _safetensors(root / name, c)
        zoo[name] = expect

    variant("z_dim_1e10.safetensors", "z_dim", z_dim=10 ** 10)
    variant("resolution_65536.safetensors", "img_resolution", img_resolution=65536)
    variant("mapping_layers_1e7.safetensors", "num_layers", mapping_kwargs__num_layers=10 ** 7)
    variant("z_dim_null.safetensors", "z_dim", z_dim=None)
    variant("img_channels_-3.safetensors", "img_channels", img_channels=-3)
    variant("channels_huge.safetensors", "weights, more than recon loads", img_resolution=4096,
            synthesis_kwargs__channel_base=1 << 20, synthesis_kwargs__channel_max=4096)
    c = dict(cfg, mapping_kwargs=5)
    _safetensors(root / "mapping_kwargs_5.safetensors", c)
    zoo["mapping_kwargs_5.safetensors"] = "mapping_kwargs must be a mapping"
    deep = json.dumps(dict(cfg, synthesis_kwargs="@")).replace('"@"', '{"a": ' * 5000 + "null" + "}" * 5000)
    _safetensors(root / "deep_config.safetensors", deep)
    zoo["deep_config.safetensors"] = "deep_config.safetensors"

    G = tiny()
    for dtype in (torch.int32, torch.int64, torch.bool):
        state = {k: v.contiguous() for k, v in G.state_dict().items()}
        state["mapping.fc0.weight"] = state["mapping.fc0.weight"].to(dtype)
        name = f"weights_{str(dtype)[6:]}.safetensors"
        _safetensors(root / name, cfg, state)
        zoo[name] = "floating-point"

    for attr, value, expect in (("z_dim", 10 ** 10, "z_dim"), ("img_resolution", 65536, "img_resolution")):
        G = tiny()
        setattr(G, attr, value)
        write_official_pkl(root / f"pkl_{attr}.pkl", G)
        zoo[f"pkl_{attr}.pkl"] = expect
    G = tiny()
    G.mapping.num_layers = 10 ** 7
    write_official_pkl(root / "pkl_mapping_layers_1e7.pkl", G)
    zoo["pkl_mapping_layers_1e7.pkl"] = "num_layers"

    # 404 bytes that ask for a 31623 x 31623 float tensor over a 1-element storage (4 GB).
    strided = _Reduce(torch._utils._rebuild_tensor_v2, torch.zeros(1).storage(), 0, (31623, 31623), (0, 0), False,
                      collections.OrderedDict())
    (root / "zero_stride.pkl").write_bytes(pickle.dumps({"G_ema": strided}, protocol=4))
    zoo["zero_stride.pkl"] = "claims 1000014129 elements from a storage of 1"
    overlap = _Reduce(torch._utils._rebuild_tensor_v2, torch.zeros(10).storage(), 0, (4, 4), (1, 1), False,
                      collections.OrderedDict())
    (root / "overlapping_stride.pkl").write_bytes(pickle.dumps({"G_ema": overlap}, protocol=4))
    zoo["overlapping_stride.pkl"] = "claims 16 elements from a storage of 10"

    (root / "nested_20000.pkl").write_bytes(_nested_modules_pickle(20000))
    zoo["nested_20000.pkl"] = "nested_20000.pkl"

    # BUILD state applied to the allow-listed EasyDict class itself, and to an allowed function.
    easy = b"cdnnlib.util\nEasyDict\n"
    (root / "build_on_class.pkl").write_bytes(
        b"\x80\x02" + easy + b"N}X\x0b\x00\x00\x00__setitem__cbuiltins\nset\ns\x86b.")
    zoo["build_on_class.pkl"] = "refused BUILD on a class"
    (root / "build_on_function.pkl").write_bytes(
        b"\x80\x02ctorch._utils\n_rebuild_parameter\nN}X\x08\x00\x00\x00__code__Ns\x86b.")
    zoo["build_on_function.pkl"] = "refused BUILD"
    (root / "build_dunder.pkl").write_bytes(
        b"\x80\x02" + easy + b")\x81}X\t\x00\x00\x00__class__" + easy + b"sb.")
    zoo["build_dunder.pkl"] = "refused BUILD"
    return zoo


LOADER = textwrap.dedent("""
    import json, sys, time
    import recon
    from recon.errors import CheckpointError
    out = {}
    for path in sys.argv[1:]:
        t = time.process_time()
        try:
            recon.load_generator(path)
            out[path] = ["loaded", time.process_time() - t]
        except CheckpointError as exc:
            out[path] = [str(exc), time.process_time() - t]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest)
    out["_maxrss_kb"] = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
    print(json.dumps(out))
""")


def test_zoo_is_refused_with_one_line_in_bounded_time_and_memory(tmp_path):
    zoo = build_zoo(tmp_path)
    paths = [str(tmp_path / n) for n in zoo]
    env = dict(os.environ, RECON_NO_CUDA_OPS="1")
    res = subprocess.run([sys.executable, "-c", LOADER, *paths], capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name, expect in zoo.items():
        message, seconds = out[str(tmp_path / name)]
        assert message != "loaded", name
        assert str(tmp_path / name) in message and expect in message, (name, message)
        assert "\n" not in message and len(message) < 400, (name, message)
        assert seconds < 60, (name, seconds)
    assert out["_maxrss_kb"] < 1.5 * 2 ** 20, out["_maxrss_kb"]


def test_zero_stride_pickle_is_tiny():
    strided = _Reduce(torch._utils._rebuild_tensor_v2, torch.zeros(1).storage(), 0, (31623, 31623), (0, 0), False,
                      collections.OrderedDict())
    assert len(pickle.dumps({"G_ema": strided}, protocol=4)) < 600


def test_hostile_build_cannot_change_recon_classes(tmp_path):
    zoo = build_zoo(tmp_path)
    before = (EasyDict.__setitem__, dict(vars(EasyDict)))
    for name in ("build_on_class.pkl", "build_on_function.pkl", "build_dunder.pkl"):
        with pytest.raises(CheckpointError, match="refused BUILD"):
            recon.load_generator(tmp_path / name)
        assert zoo[name]
    assert (EasyDict.__setitem__, dict(vars(EasyDict))) == before
    # the next, valid checkpoint in the same process loads as before
    G = tiny()
    write_official_pkl(tmp_path / "ok.pkl", G)
    z = torch.randn(2, 8)
    assert torch.equal(recon.load_generator(tmp_path / "ok.pkl")(z, None, noise_mode="const"),
                       G(z, None, noise_mode="const"))


def test_module_depth_is_bounded():
    from recon.model.checkpoint import MAX_MODULE_DEPTH, _collect_state
    from recon.model.safe_pickle import PersistentObject
    obj = PersistentObject("Leaf", "", {})
    for _ in range(MAX_MODULE_DEPTH + 2):
        obj = PersistentObject("Node", "", {"_modules": {"child": obj}})
    with pytest.raises(CheckpointError, match="nested more than"):
        _collect_state(obj, "", {})


def test_parameter_count_matches_the_built_network():
    from recon.model.checkpoint import count_parameters, normalize_config
    for kw in (dict(), dict(architecture="resnet"), dict(architecture="orig")):
        G = Generator(z_dim=16, c_dim=3, w_dim=16, img_resolution=32, img_channels=3,
                      mapping_kwargs=dict(num_layers=3),
                      synthesis_kwargs=dict(channel_base=256, channel_max=32, **kw))
        built = sum(t.numel() for t in G.state_dict().values())
        assert count_parameters(normalize_config(G.config)) == built, kw


def test_official_pickle_of_nested_dumps_still_loads(tmp_path):
    """The checked BUILD and the Python unpickler keep legitimate files working (numpy dtypes,
    EasyDicts, OrderedDicts)."""
    G = tiny()
    (tmp_path / "g.pkl").write_bytes(dumps_official({"G_ema": G, "extra": {"np": __import__("numpy").float64(1.5)}}))
    z = torch.randn(1, 8)
    assert torch.equal(recon.load_generator(tmp_path / "g.pkl")(z, None, noise_mode="const"),
                       G(z, None, noise_mode="const"))
