"""Fetching weights: local paths and file:// URLs, sha256 pinning, resume over HTTP, offline errors."""
import hashlib
import http.server
import threading

import pytest

from recon.model.weights import DownloadError, cache_dir, download_path, fetch, obtain, resolve_source


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_local_source_is_used_where_it_is(tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights" * 1000)
    assert obtain(str(src)) == (src, sha(src.read_bytes()))
    assert obtain(src.as_uri()) == (src, sha(src.read_bytes()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]          # nothing copied
    # a wrong pin is refused, and the user's own file is left alone
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        obtain(src.as_uri(), sha256="0" * 64)
    assert src.read_bytes() == b"weights" * 1000
    with pytest.raises(DownloadError, match=r"no such file \(weights.vgg16.source\)"):
        obtain((tmp_path / "nope.pkl").as_uri(), hint="weights.vgg16.source")


def test_downloads_go_to_the_per_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert download_path("https://x.org/a/ffhq.pkl?dl=1") == tmp_path / "c" / "downloads" / "ffhq.pkl"
    monkeypatch.delenv("RECON_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "recon"


def test_sha256_pin_refuses_and_removes_a_bad_download(tmp_path):
    server, url = serve(type("H", (FlakyHandler,), dict(requests=[], drops=0)))
    dest = tmp_path / "out" / "ffhq.pkl"
    try:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            fetch(url, dest, sha256="0" * 64, progress=False)
        assert not dest.exists() and not dest.with_name("ffhq.pkl.part").exists()
        assert fetch(url, dest, sha256=sha(FlakyHandler.payload), progress=False) == sha(FlakyHandler.payload)
    finally:
        server.shutdown()
    # a file already in place is verified, not refetched; a wrong pin on it is refused too
    assert fetch(url, dest, progress=False) == sha(FlakyHandler.payload)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(url, dest, sha256=sha(b"changed"), progress=False)
    assert not dest.exists()


def test_offline_message_names_url_and_what_to_do(tmp_path):
    url = "http://127.0.0.1:9/ffhq.pkl"  # discard port: connection refused at once
    with pytest.raises(DownloadError) as exc:
        fetch(url, tmp_path / "cache" / "ffhq.pkl", progress=False, timeout=5, hint="weights.generator.source")
    msg = str(exc.value)
    assert url in msg and "cache/ffhq.pkl" in msg and "weights.generator.source" in msg and "file://" in msg


def test_official_names_resolve():
    assert resolve_source("ffhq").endswith("stylegan2-ada-pytorch/pretrained/ffhq.pkl")
    assert resolve_source("vgg16").endswith("metrics/vgg16.pt")
    assert resolve_source("ngc-ffhq-256").endswith("stylegan2-ffhq-256x256.pkl")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 4096
    requests = []

    def do_GET(self):
        rng = self.headers.get("Range")
        self.requests.append(rng)
        data, status = self.payload, 200
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            data, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_http_download_resumes_from_partial_file(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/vgg16.pt"
        dest = tmp_path / "vgg16.pt"
        part = tmp_path / "vgg16.pt.part"
        part.write_bytes(RangeHandler.payload[:300000])  # an interrupted earlier download
        digest = fetch(url, dest, sha256=sha(RangeHandler.payload), progress=False, timeout=10)
        assert digest == sha(RangeHandler.payload) and dest.read_bytes() == RangeHandler.payload
        assert RangeHandler.requests[-1] == "bytes=300000-" and not part.exists()
    finally:
        server.shutdown()


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Announces the whole file, then drops the connection after ``cut`` bytes for the first
    ``drops`` requests; honours Range unless ``ignore_range``."""
    payload = bytes(range(251)) * 2000
    cut, drops, ignore_range = 150000, 1, False
    requests = []

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        data, status = self.payload, 200
        if rng and not self.ignore_range:
            start = int(rng.split("=")[1].rstrip("-"))
            data, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if len(type(self).requests) <= self.drops:
            self.wfile.write(data[:self.cut])
            self.wfile.flush()
            self.connection.shutdown(2)   # the connection drops mid-transfer
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def serve(handler):
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/ffhq.pkl"


@pytest.mark.parametrize("pinned", [False, True])
def test_truncated_transfer_is_an_error_and_the_next_run_resumes(tmp_path, pinned):
    handler = type("H", (FlakyHandler,), dict(requests=[], drops=1))
    server, url = serve(handler)
    digest = sha(FlakyHandler.payload) if pinned else ""
    dest = tmp_path / "cache" / "ffhq.pkl"
    try:
        with pytest.raises(DownloadError, match=r"interrupted 1 times \(.*\); .*ffhq\.pkl\.part keeps the 150000 "
                                                r"bytes received: run again to resume"):
            fetch(url, dest, sha256=digest, progress=False, timeout=10, retries=0)
        assert not dest.exists()
        assert dest.with_name("ffhq.pkl.part").stat().st_size == 150000   # kept, pinned or not
        assert fetch(url, dest, sha256=digest, progress=False, timeout=10, retries=0) == sha(FlakyHandler.payload)
        assert dest.read_bytes() == FlakyHandler.payload and handler.requests == [None, "bytes=150000-"]
    finally:
        server.shutdown()


def test_retries_with_backoff_within_one_run(tmp_path):
    handler = type("H", (FlakyHandler,), dict(requests=[], drops=2))
    server, url = serve(handler)
    try:
        dest = tmp_path / "ffhq.pkl"
        assert fetch(url, dest, progress=False, timeout=10, retries=3, backoff=0.01) == sha(FlakyHandler.payload)
        assert handler.requests == [None, "bytes=150000-", "bytes=300000-"]
    finally:
        server.shutdown()


def test_server_that_ignores_range_starts_over(tmp_path):
    handler = type("H", (FlakyHandler,), dict(requests=[], drops=1, ignore_range=True))
    server, url = serve(handler)
    try:
        dest = tmp_path / "ffhq.pkl"
        assert fetch(url, dest, progress=False, timeout=10, retries=2, backoff=0.01) == sha(FlakyHandler.payload)
        assert dest.read_bytes() == FlakyHandler.payload and handler.requests == [None, "bytes=150000-"]
    finally:
        server.shutdown()


def _stage(tmp_path, params: dict, resolution: int = 1024):
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from ruamel.yaml import YAML
    base = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    base["weights"] = params
    base["align"]["resolution"] = resolution
    with open(tmp_path / "params.yaml", "w") as f:
        YAML().dump(base, f)
    return subprocess.run([sys.executable, "-m", "recon.stages.download_weights", "--out", "weights"],
                          cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RECON_NO_CUDA_OPS="1", RECON_CACHE_DIR=str(tmp_path / "cache")))


def test_offline_run_names_every_missing_file(tmp_path):
    res = _stage(tmp_path, {"generator": {"source": "http://127.0.0.1:9/ffhq.pkl", "sha256": ""},
                            "vgg16": {"source": "http://127.0.0.1:9/vgg16.pt", "sha256": ""}})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "download_weights: error: 2 of 2 weights files are missing" in res.stderr
    for url, where, key in (("http://127.0.0.1:9/ffhq.pkl", "cache/downloads/ffhq.pkl", "weights.generator.source"),
                            ("http://127.0.0.1:9/vgg16.pt", "cache/downloads/vgg16.pt", "weights.vgg16.source")):
        line = next(text for text in res.stderr.splitlines() if url in text)
        assert where in line and key in line and "file://" in line


def test_cached_file_that_does_not_parse_names_path_and_remedy(tmp_path):
    from tiny_vgg import write_tiny_vgg
    write_tiny_vgg(tmp_path / "vgg16.pt")
    cache = tmp_path / "cache" / "downloads"
    cache.mkdir(parents=True)
    (cache / "ffhq.pkl").write_bytes(b"\x80\x04garbage from a proxy error page")
    res = _stage(tmp_path, {"generator": {"source": "http://127.0.0.1:9/ffhq.pkl", "sha256": ""},
                            "vgg16": {"source": (tmp_path / "vgg16.pt").as_uri(), "sha256": ""}})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "cache/downloads/ffhq.pkl" in res.stderr and "delete it and rerun" in res.stderr
    assert not (tmp_path / "weights" / "generator.safetensors").exists()


def test_resolution_mismatch_is_refused_at_download_time(tmp_path, golden_dir):
    from tiny_vgg import write_tiny_vgg
    write_tiny_vgg(tmp_path / "vgg16.pt")
    res = _stage(tmp_path, {"generator": {"source": (golden_dir / "official_format.pkl").as_uri(), "sha256": ""},
                            "vgg16": {"source": (tmp_path / "vgg16.pt").as_uri(), "sha256": ""}}, resolution=64)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert (f"params.yaml: align.resolution: 64, but the generator ({(golden_dir / 'official_format.pkl').as_uri()}) "
            "makes 32x32") in res.stderr
    assert not (tmp_path / "weights" / "weights.json").exists()


def test_the_stage_stores_the_weights_by_digest_and_records_them(tmp_path, golden_dir):
    """A local source is not copied: the store holds a hard link to it; weights.json records the
    sources and digests, and the stages find the files by digest; a damaged store file is named."""
    import json

    from tiny_vgg import write_tiny_vgg

    from recon.errors import MissingInputError
    from recon.model.weights import resolve_weights
    write_tiny_vgg(tmp_path / "vgg16.pt")
    spec = {"generator": {"source": (golden_dir / "official_format.pkl").as_uri(), "sha256": ""},
            "vgg16": {"source": str(tmp_path / "vgg16.pt"), "sha256": ""}}
    res = _stage(tmp_path, spec, resolution=32)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["weights.json"]
    record = json.loads((tmp_path / "weights" / "weights.json").read_text())
    assert set(record["generator"]) == {"source", "sha256", "verified", "converted_sha256"}
    import os
    os.environ["RECON_CACHE_DIR"], old = str(tmp_path / "cache"), os.environ.get("RECON_CACHE_DIR")
    try:
        files = resolve_weights(tmp_path / "weights")
        assert files.vgg16.samefile(tmp_path / "vgg16.pt")
        assert sha(files.generator.read_bytes()) == record["generator"]["converted_sha256"]
        files.generator.write_bytes(b"damaged")
        with pytest.raises(MissingInputError, match=r"\.safetensors: damaged \(its sha256 differs\); .*dvc repro -f "
                                                    r"download_weights"):
            resolve_weights(tmp_path / "weights")
    finally:
        os.environ["RECON_CACHE_DIR"] = old
    # running the stage again mends the store and writes the same record
    assert _stage(tmp_path, spec, resolution=32).returncode == 0
    assert json.loads((tmp_path / "weights" / "weights.json").read_text()) == record
    assert sha(files.generator.read_bytes()) == record["generator"]["converted_sha256"]


def test_an_interrupted_download_is_named_as_one_the_next_run_resumes(tmp_path, monkeypatch):
    """The stage's message for a transfer cut off every time: interrupted, resumed by the next run
    (not "missing"), with the partial file kept; a file that is simply unreachable is missing."""
    from tiny_vgg import write_tiny_vgg

    import recon.model.weights as weights
    from recon.config import parse_params
    from recon.pipeline.download import weights_stage
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(weights.time, "sleep", lambda s: None)
    write_tiny_vgg(tmp_path / "vgg16.pt")
    handler = type("H", (FlakyHandler,), dict(requests=[], drops=100, cut=1000))
    server, url = serve(handler)
    try:
        params = parse_params({"weights": {"generator": {"source": url}, "vgg16": {"source": str(tmp_path / "vgg16.pt")}}})
        with pytest.raises(DownloadError) as err:
            weights_stage(params, tmp_path / "weights")
        lines = str(err.value).splitlines()
        assert lines[0] == "1 download was interrupted (the next run resumes it where it stopped):"
        assert "download interrupted 4 times" in lines[1] and "keeps the 4000 bytes received: run again to resume" in lines[1]
        params = parse_params({"weights": {"generator": {"source": url},
                                           "vgg16": {"source": "http://127.0.0.1:9/vgg16.pt"}}})
        with pytest.raises(DownloadError, match=r"^1 of 2 weights files are missing; 1 download was interrupted "):
            weights_stage(params, tmp_path / "weights")
    finally:
        server.shutdown()


@pytest.mark.parametrize("label, text, problem", [
    ("nested deep", "[" * 100000, "nested more than 32 levels deep"),
    ("a digest that is a path", '{"generator": {"converted_sha256": "../../etc/passwd"}, "vgg16": {"sha256": "'
     + "0" * 64 + '"}}', "a sha256 that is not one"),
    ("a list", "[1, 2]", "TypeError"),
    ("no vgg16", '{"generator": {"converted_sha256": "' + "0" * 64 + '"}}', "KeyError"),
])
def test_a_weights_record_that_is_not_recons_is_refused_in_one_line(tmp_path, label, text, problem):
    """weights/weights.json is recon's own file read back: a hostile one is refused naming it and the
    fix, before any path is made from it."""
    from recon.errors import MissingInputError
    from recon.model.weights import resolve_weights
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "weights.json").write_text(text)
    with pytest.raises(MissingInputError) as err:
        resolve_weights(tmp_path / "weights")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{tmp_path / 'weights' / 'weights.json'}: unreadable (")
    assert problem in line and line.endswith("run `dvc repro -f download_weights`")
