"""Fetching weights: local paths and file:// URLs, sha256 pinning, resume over HTTP, offline errors."""
import hashlib
import http.server
import threading

import pytest

from recon.weights import DownloadError, fetch, resolve_source


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_path_and_file_url(tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights" * 1000)
    assert fetch(str(src), tmp_path / "a" / "w.bin", progress=False) == sha(src.read_bytes())
    assert fetch(src.as_uri(), tmp_path / "b" / "w.bin", progress=False) == sha(src.read_bytes())
    assert (tmp_path / "b" / "w.bin").read_bytes() == src.read_bytes()


def test_sha256_pin_refuses_and_removes_bad_file(tmp_path):
    src = tmp_path / "w.bin"
    src.write_bytes(b"abc")
    dest = tmp_path / "out" / "w.bin"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(src.as_uri(), dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name("w.bin.part").exists()
    assert fetch(src.as_uri(), dest, sha256=sha(b"abc"), progress=False) == sha(b"abc")
    # a file already in place is verified, not refetched; a wrong pin on it is refused too
    src.write_bytes(b"changed")
    assert fetch(src.as_uri(), dest, progress=False) == sha(b"abc")
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(src.as_uri(), dest, sha256=sha(b"changed"), progress=False)
    assert not dest.exists()


def test_missing_local_file(tmp_path):
    with pytest.raises(DownloadError, match="no such file"):
        fetch((tmp_path / "nope.pkl").as_uri(), tmp_path / "x", progress=False)


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
