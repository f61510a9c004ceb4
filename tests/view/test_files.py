"""The viewer's file server: what it serves, and what it refuses (paths out of its roots, writes,
listings), on local folders and on a bucket of the S3 server on 127.0.0.1."""

from __future__ import annotations

import http.client
import os

import pytest

from alseg.io import store as st
from alseg.view.files import FileServer


VIEWER = "http://127.0.0.1:8090"


def _get(server: FileServer, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A raw request from the viewer's page (the path sent as written, not normalised by a client library)."""
    host, port = server.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in {"Host": f"127.0.0.1:{port}", "Origin": VIEWER, **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders()
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path):
    run = tmp_path / "run"
    (run / "pred.zarr" / "s0" / "c").mkdir(parents=True)
    (run / "pred.zarr" / "zarr.json").write_text('{"zarr_format": 3}')
    (run / "pred.zarr" / "s0" / "c" / "0").write_bytes(bytes(range(100)))
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, run / "link-out")
    os.symlink(run / "pred.zarr" / "zarr.json", run / "link-in")
    image = tmp_path / "image.zarr"
    image.mkdir()
    (image / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    server = FileServer({"run": str(run), "input": str(image)}, documents={"/state.json": b'{"layers": []}'}).start()
    server.allow_viewer("http://127.0.0.1:8090/v/token/")
    yield server, tmp_path
    server.stop()


def test_serves_files_under_its_roots_with_cors_and_byte_ranges(served):
    server, tmp = served
    status, headers, body = _get(server, "/run/pred.zarr/s0/c/0")
    assert status == 200 and body == bytes(range(100)) and headers["access-control-allow-origin"] == VIEWER
    assert _get(server, "/input/zarr.json")[2] == (tmp / "image.zarr" / "zarr.json").read_bytes()
    assert _get(server, "/run/pred.zarr/zarr.json")[1]["content-type"] == "application/json"
    assert _get(server, "/state.json")[2] == b'{"layers": []}'
    status, headers, body = _get(server, "/run/pred.zarr/s0/c/0", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == bytes(range(10, 20)) and headers["content-range"] == "bytes 10-19/100"
    assert _get(server, "/run/pred.zarr/s0/c/0", headers={"Range": "bytes=-5"})[2] == bytes(range(95, 100))
    status, headers, body = _get(server, "/run/pred.zarr/s0/c/0", method="HEAD")
    assert status == 200 and headers["content-length"] == "100" and body == b""
    for odd in ("bytes=0-1,5-6", "items=0-1", "bytes=x-y"):  # not one byte range: the whole file
        assert _get(server, "/run/pred.zarr/s0/c/0", headers={"Range": odd})[:3:2] == (200, bytes(range(100)))
    assert _get(server, "/run/pred.zarr/s0/c/0", headers={"Range": "bytes=200-"})[0] == 416
    assert _get(server, "/run/pred.zarr/zarr.json?x=1")[1]["content-type"] == "application/json"
    assert _get(server, "/run/link-in")[0] == 200, "a link that stays inside the root is followed"
    assert _get(server, "/run/pred.zarr/s0/c/9")[0] == 404, "a missing chunk is a 404 (the reader's fill value)"
    assert server.url("run", "pred.zarr") == f"{server.base}/run/pred.zarr"


@pytest.mark.parametrize("path", ["/run/../secret.txt", "/run/pred.zarr/../../secret.txt", "/run/%2e%2e/secret.txt",
                                  "/run/..%2fsecret.txt", "/run//etc/passwd", "/run/./pred.zarr/zarr.json",
                                  "/run/pred.zarr%5c..%5c..%5csecret.txt", "/run/link-out", "/input/%00",
                                  "/run/%252e%252e/secret.txt", "/run/pred.zarr%3Fx", "//run/../secret.txt"])
def test_refuses_every_way_out_of_its_roots(served, path):
    server, _ = served
    status, headers, body = _get(server, path)
    assert status in (403, 404) and b"not yours" not in body and b"zarr_format" not in body, (path, status)


def test_only_the_viewers_page_may_read_and_only_by_the_loopback_name(served):
    server, _ = served
    status, headers, body = _get(server, "/run/pred.zarr/zarr.json", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers, "another page's script may not read the answer"
    assert _get(server, "/run/pred.zarr/zarr.json", headers={"Origin": "http://localhost:8090"})[1][
        "access-control-allow-origin"] == "http://localhost:8090"
    # a name that resolves here by DNS rebinding is not this server's name
    assert _get(server, "/run/pred.zarr/zarr.json", headers={"Host": f"evil.example:{server.port}"})[0] == 403
    assert _get(server, "/run/pred.zarr/zarr.json", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_no_listing_no_writes_no_unknown_roots(served):
    server, tmp = served
    for path in ("/", "/run", "/run/", "/run/pred.zarr", "/run/pred.zarr/s0", f"/{tmp}/secret.txt", "/other/x"):
        status, _, body = _get(server, path)
        assert status in (403, 404) and b"zarr.json" not in body and b"not yours" not in body, (path, status)
    for method in ("PUT", "DELETE", "POST"):
        assert _get(server, "/run/pred.zarr/zarr.json", method=method)[0] == 405
    assert (tmp / "run" / "pred.zarr" / "zarr.json").read_text() == '{"zarr_format": 3}'
    assert _get(server, "/run/pred.zarr/zarr.json", method="OPTIONS")[0] == 204


@pytest.mark.s3
def test_a_private_bucket_is_served_with_the_environments_credentials(s3_bucket, s3_server):
    st.write_bytes(st.join(s3_bucket, "run", "pred.zarr", "zarr.json"), b'{"zarr_format": 3}')
    st.write_bytes(st.join(s3_bucket, "outside.txt"), b"not yours")
    server = FileServer({"run": st.join(s3_bucket, "run")}).start()
    try:
        assert _get(server, "/run/pred.zarr/zarr.json")[2] == b'{"zarr_format": 3}'
        assert _get(server, "/run/pred.zarr/s0/c/0")[0] == 404
        assert _get(server, "/run/pred.zarr")[0] == 404, "a prefix is not a file and is not listed"
        for path in ("/run/../outside.txt", "/run/%2e%2e/outside.txt"):
            status, _, body = _get(server, path)
            assert status == 403 and b"not yours" not in body
        for value in (s3_server["AWS_SECRET_ACCESS_KEY"], s3_server["AWS_ACCESS_KEY_ID"]):
            assert value not in server.url("run", "pred.zarr")
    finally:
        server.stop()
