"""Nothing lost, nothing leaked, nothing hangs: the run directory never touches an input, one job
owns it, absent and corrupt chunks fail naming them, credentials never reach a message or a
file, silent stores and impossible resource requests fail in bounded time, exit codes as the
README says. Every case runs the real command line; inputs are hashed before and after."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from alseg.io import store as st
from alseg.io.omezarr import open_volume, output_record

# Distinctive fake credentials: none of these may appear in anything alseg prints or writes.
KEY = "AKIAALSEGFAKEKEY0042"
SECRET = "alseg/Fake+Secret=Value/0042"
TOKEN = "alsegFakeSessionToken0042"
LEAKS = (KEY, SECRET, TOKEN, "Fake+Secret", "Fake%2BSecret", "alsegsig0042")
URL_SPELLINGS = {
    "user-and-password": f"s3://{KEY}:alsegplainsecret0042@bucket/v.zarr",
    "secret-with-slash": f"s3://{KEY}:{SECRET}@bucket/v.zarr",
    "key-only": f"s3://{KEY}@bucket/v.zarr",
    "presigned-query": f"https://example.org/v.zarr?X-Amz-Credential={KEY}&X-Amz-Signature=alsegsig0042",
}


def alseg(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "alseg.cli", *args], capture_output=True, text=True, timeout=timeout, env=full)


def tree(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path``: the oracle for "byte-identical"."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def volume_template(tmp_path_factory) -> Path:
    from alseg.synth import SynthParams, write_synthetic

    root = tmp_path_factory.mktemp("template")
    write_synthetic(root / "v.zarr", SynthParams.preset("easy", shape=(16, 64, 64), seed=5), chunks=(8, 32, 32))
    return root / "v.zarr"


@pytest.fixture
def volume(tmp_path, volume_template) -> Path:
    """A fresh copy of a small synthetic volume (16 x 64 x 64, chunks 8 x 32 x 32, ground truth)."""
    import shutil

    out = tmp_path / "data" / "v.zarr"
    shutil.copytree(volume_template, out)
    return out


def job(path: Path, url: str, run_dir: str, **sections) -> Path:
    spec = {"input": {"url": url, "ground_truth": "mitochondria"}, "run": {"dir": run_dir},
            "patches": {"shape_vox": [8, 32, 32]}, "selection": {"method": "random", "budget": 2},
            "pseudolabel": {"method": "classical", "block_shape_vox": [8, 32, 32], "halo_px": 16, "min_size_vox": 20}}
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    path.write_text(yaml.safe_dump(spec))
    return path


# --------------------------------------------------------------------------------------------- #
# 1. the run directory never overlaps an input
# --------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("case", ["parent-of-input-named-pseudolabels", "equal", "inside", "spelled-differently", "symlink"])
def test_run_dir_overlapping_the_input_is_refused_before_anything_is_written(tmp_path, volume, case):
    if case == "parent-of-input-named-pseudolabels":
        named = volume.parent / "pseudolabels.zarr"
        volume.rename(named)
        url, run = str(named), str(volume.parent)
    elif case == "equal":
        url, run = str(volume), str(volume)
    elif case == "inside":
        url, run = str(volume), str(volume / "labels")
    elif case == "spelled-differently":
        url, run = str(volume), f"file://{volume.parent}/../{volume.parent.name}/./{volume.name}/"
    else:
        (tmp_path / "link").symlink_to(volume.parent)
        url, run = str(volume), str(tmp_path / "link" / volume.name)
    before = tree(tmp_path / "data")
    spec = job(tmp_path / "job.yaml", url, run)
    res = alseg("validate", str(spec))
    assert res.returncode == 2 and "run.dir" in res.stderr and "never writes where it reads" in res.stderr, res.stderr
    res = alseg("pseudolabel", str(spec), "-q")
    assert res.returncode == 2 and "never writes where it reads" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert tree(tmp_path / "data") == before, "the input and its ground truth are byte-identical, nothing added"


# --------------------------------------------------------------------------------------------- #
# 2. one job owns a run directory
# --------------------------------------------------------------------------------------------- #
def test_a_second_job_does_not_silently_replace_the_first(tmp_path, volume):
    run = tmp_path / "run"
    first = job(tmp_path / "a.yaml", str(volume), str(run))
    assert alseg("pseudolabel", str(first), "-q").returncode == 0
    record = json.loads((run / "alseg-run.json").read_text())
    assert record["job_digest"] and record["versions"]["alseg"] and record["spec"]["input"]["url"] == str(volume)
    made = tree(run / "pseudolabels.zarr")
    second = job(tmp_path / "b.yaml", str(volume), str(run), pseudolabel={"min_size_vox": 5})
    res = alseg("pseudolabel", str(second), "-q")
    assert res.returncode == 1 and "belongs to another job" in res.stderr and "pseudolabel.min_size_vox" in res.stderr, res.stderr
    assert "run.overwrite: true" in res.stderr
    assert tree(run / "pseudolabels.zarr") == made, "the first job's pseudo-labels are untouched"
    assert alseg("validate", str(second)).returncode == 1
    # how and where a job runs is not what it is: another backend is the same job
    same = job(tmp_path / "c.yaml", str(volume), str(run), resources={"retries": 5})
    assert alseg("pseudolabel", str(same), "-q").returncode == 0
    # with run.overwrite the second job takes over and says what it replaces
    forced = job(tmp_path / "d.yaml", str(volume), str(run), pseudolabel={"min_size_vox": 5}, run={"overwrite": True})
    res = alseg("pseudolabel", str(forced), "-q")
    assert res.returncode == 0, res.stderr
    assert "takes over" in res.stderr and "pseudolabel.min_size_vox" in res.stderr
    assert tree(run / "pseudolabels.zarr") != made
    assert json.loads((run / "alseg-run.json").read_text())["replaced"][0]["job_digest"] == record["job_digest"]


def test_a_run_dir_holding_foreign_data_or_a_foreign_output_is_refused(tmp_path, volume):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes")
    res = alseg("pseudolabel", str(job(tmp_path / "j.yaml", str(volume), str(run))), "-q")
    assert res.returncode == 1 and "alseg did not write" in res.stderr, res.stderr
    assert (run / "notes.txt").read_text() == "my notes" and len(list(run.iterdir())) == 1
    # inside a run directory alseg owns, a pseudolabels.zarr that is not alseg's pseudo-labels stays
    import shutil

    run2 = tmp_path / "run2"
    assert alseg("validate", str(job(tmp_path / "k.yaml", str(volume), str(run2)))).returncode == 0
    from alseg.rundir import claim
    from alseg.spec import load_spec

    claim(load_spec(tmp_path / "k.yaml"))
    shutil.copytree(volume, run2 / "pseudolabels.zarr")  # a user's volume where alseg writes
    before = tree(run2 / "pseudolabels.zarr")
    res = alseg("pseudolabel", str(tmp_path / "k.yaml"), "-q")
    assert res.returncode == 1 and "not a pseudolabels" in res.stderr, res.stderr
    assert tree(run2 / "pseudolabels.zarr") == before


# --------------------------------------------------------------------------------------------- #
# 3. absent and corrupt chunks
# --------------------------------------------------------------------------------------------- #
def test_a_missing_input_chunk_fails_the_job_naming_it(tmp_path, volume):
    (volume / "s0" / "c" / "1" / "0" / "1").unlink()
    before = tree(tmp_path / "data")
    run = tmp_path / "run"
    res = alseg("pseudolabel", str(job(tmp_path / "j.yaml", str(volume), str(run))), "-q")
    assert res.returncode == 1, res.stderr
    assert "chunk 's0/c/1/0/1' is missing" in res.stderr and str(volume) in res.stderr and "Traceback" not in res.stderr
    assert not output_record(run / "pseudolabels.zarr")["complete"], "nothing partial looks complete"
    assert tree(tmp_path / "data") == before
    # a volume whose absent chunks mean empty opts in
    lenient = job(tmp_path / "k.yaml", str(volume), str(tmp_path / "run2"), input={"missing_chunks": "empty"})
    assert alseg("pseudolabel", str(lenient), "-q").returncode == 0


def test_a_corrupt_input_chunk_fails_naming_the_array_and_the_chunk(tmp_path, volume):
    (volume / "s0" / "c" / "0" / "1" / "0").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    res = alseg("pseudolabel", str(job(tmp_path / "j.yaml", str(volume), str(tmp_path / "run"))), "-q")
    assert res.returncode == 1, res.stderr
    assert f"{volume}: cannot read chunk 's0/c/0/1/0'" in res.stderr and "Traceback" not in res.stderr, res.stderr


# --------------------------------------------------------------------------------------------- #
# 4. credentials
# --------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("field", ["input.url", "input.ground_truth", "run.dir", "embedding.weights_path"])
@pytest.mark.parametrize("spelling", list(URL_SPELLINGS))
def test_credentials_in_any_url_field_are_refused_without_repeating_them(tmp_path, volume, field, spelling, capsys):
    from alseg.cli import main

    section, key = field.split(".")
    spec = job(tmp_path / "j.yaml", str(volume), str(tmp_path / "run"), **{section: {key: URL_SPELLINGS[spelling]}})
    for args in (["validate", "--offline", str(spec)], ["validate", str(spec)], ["pseudolabel", str(spec), "-q"]):
        assert main(args) == 2, args
        out = capsys.readouterr()
        assert field in out.err and "credentials must not be written into the spec" in out.err
        assert not [leak for leak in LEAKS if leak in out.out + out.err], out.err
    assert not (tmp_path / "run").exists()


def test_credentials_on_the_command_line_are_refused_and_root_errors_do_not_echo_the_spec(tmp_path, capsys):
    from alseg.cli import main

    for url in URL_SPELLINGS.values():
        assert main(["info", url]) == 1
        err = capsys.readouterr().err
        assert "credentials are never taken from URLs" in err and not [leak for leak in LEAKS if leak in err], err
    spec = tmp_path / "j.yaml"  # a root-level error (simulated annotation without ground truth)
    spec.write_text(yaml.safe_dump({"name": "distinctive-job-name-0042", "input": {"url": "somewhere-distinctive-0042.zarr"},
                                    "run": {"dir": str(tmp_path / "run")}}))
    assert main(["validate", "--offline", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "needs input.ground_truth" in err and "distinctive" not in err, err


@pytest.mark.s3
def test_no_credential_reaches_any_message_log_report_or_file(tmp_path, s3_server, volume_template):
    """A run with distinctive credentials in the environment, an S3 input, S3 client errors, bad
    URLs in every spelling and a debug traceback: grep everything printed and written."""
    import boto3

    from alseg.synth import SynthParams, write_synthetic

    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
           "AWS_ENDPOINT_URL": s3_server["AWS_ENDPOINT_URL"], "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="grep-bucket")
    write_synthetic("s3://grep-bucket/v.zarr", SynthParams.preset("easy", shape=(16, 64, 64), seed=5), chunks=(8, 32, 32))
    run = tmp_path / "run"
    good = job(tmp_path / "good.yaml", "s3://grep-bucket/v.zarr", str(run))
    runs = [alseg("pseudolabel", str(good), env=env),
            alseg("evaluate", "s3://grep-bucket/v.zarr/labels/mitochondria", str(run / "pseudolabels.zarr"), env=env),
            alseg("info", "s3://grep-bucket/v.zarr", env=env),
            alseg("info", "s3://no-such-bucket-0042/v.zarr", env=env),  # an error of the S3 client
            alseg("info", "s3://grep-bucket/nothing.zarr", env={**env, "ALSEG_DEBUG": "1"})]
    assert runs[0].returncode == 0 and runs[1].returncode == 0 and runs[2].returncode == 0, runs[0].stderr + runs[1].stderr
    assert runs[3].returncode == 1 and runs[4].returncode == 1
    for spelling in URL_SPELLINGS.values():
        bad = job(tmp_path / "bad.yaml", spelling, str(tmp_path / "r2"), input={"ground_truth": spelling})
        runs += [alseg("validate", str(bad), env=env), alseg("pseudolabel", str(bad), env={**env, "ALSEG_DEBUG": "1"}),
                 alseg("info", spelling, env={**env, "ALSEG_DEBUG": "1"})]
    printed = "".join(r.stdout + r.stderr for r in runs)
    assert "Traceback" in printed, "the debug runs print their (redacted) tracebacks"
    written = b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())
    for leak in LEAKS:
        assert leak not in printed, f"{leak!r} was printed"
        assert leak.encode() not in written, f"{leak!r} was written into the run directory"


# --------------------------------------------------------------------------------------------- #
# 5. nothing hangs
# --------------------------------------------------------------------------------------------- #
@pytest.fixture
def silent_endpoint():
    """A server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("scheme", ["s3", "http"])
def test_a_silent_endpoint_fails_within_30_seconds_with_one_line(silent_endpoint, scheme):
    env = {"AWS_ENDPOINT_URL": silent_endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    url = "s3://bucket/v.zarr" if scheme == "s3" else f"{silent_endpoint}/v.zarr"
    clock = time.monotonic()
    res = alseg("info", url, env=env, timeout=120)
    took = time.monotonic() - clock
    assert res.returncode == 1 and took < 30, (took, res.stderr)
    assert res.stderr.strip().count("\n") == 0 and "did not answer" in res.stderr, res.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_resources_no_node_can_hold_fail_before_anything_waits(tmp_path, volume):
    spec = job(tmp_path / "j.yaml", str(volume), str(tmp_path / "run"),
               resources={"backend": "ray", "pseudolabel": {"cpus": 64}})
    res = alseg("pseudolabel", str(spec), "-q", timeout=240)
    assert res.returncode == 2, res.stderr
    assert "resources.pseudolabel" in res.stderr and "64 CPU" in res.stderr and "no node" in res.stderr, res.stderr


# a flaky proxy in front of the S3 server: transient errors retried, persistent ones named
class _Flaky(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the S3 server on 127.0.0.1, except those its server's ``fail``
    answers with S3's 503 SlowDown."""

    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = self.path.split("?", 1)[0]
        if self.command == "GET" and self.server.fail(path):
            self.server.refused.append(path)
            data = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.server.forwarded.append(path)
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky_proxy(s3_server, monkeypatch):
    """The proxy on 127.0.0.1 as the S3 endpoint; set ``.fail`` (path -> bool) to inject errors."""
    from urllib.parse import urlsplit

    import fsspec

    def _clear_fsspec_cache() -> None:  # s3fs caches a filesystem per endpoint: forget it on both sides
        fsspec.get_filesystem_class("s3").clear_instance_cache()

    upstream = urlsplit(s3_server["AWS_ENDPOINT_URL"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    server.upstream, server.fail, server.refused, server.forwarded = (upstream.hostname, upstream.port), (lambda path: False), [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    _clear_fsspec_cache()
    yield server
    server.shutdown()
    server.server_close()
    _clear_fsspec_cache()


def test_transient_store_errors_are_retried_and_persistent_ones_name_the_chunk(s3_bucket, flaky_proxy):
    from alseg.errors import DataError
    from alseg.synth import SynthParams, write_synthetic

    url = f"{s3_bucket}/v.zarr"
    write_synthetic(url, SynthParams.preset("easy", shape=(16, 64, 64), seed=2), chunks=(8, 32, 32))
    flaky_proxy.forwarded.clear()
    want = open_volume(url).read()
    chunks = sorted({p for p in flaky_proxy.forwarded if "/v.zarr/s0/c/" in p})
    assert len(chunks) == 8, "the image was read through the proxy, chunk by chunk"
    # each chunk's first GET answers 503: every one is retried, and the image reads the same
    seen: set[str] = set()

    def first_time(path: str) -> bool:
        fresh = "/v.zarr/s0/c/" in path and path not in seen
        seen.add(path)
        return fresh

    flaky_proxy.fail, flaky_proxy.forwarded = first_time, []
    np.testing.assert_array_equal(open_volume(url).read(), want)
    assert sorted(set(flaky_proxy.refused)) == chunks
    assert sorted({p for p in flaky_proxy.forwarded if "/v.zarr/s0/c/" in p}) == chunks, "each refused chunk was asked for again"
    # one chunk that always answers 503: the read fails naming the volume and that chunk, in time
    bad = chunks[1]
    flaky_proxy.fail = lambda path: path == bad
    started = time.monotonic()
    with pytest.raises(DataError) as caught:
        open_volume(url).read()
    key = bad.split("/v.zarr/", 1)[1]
    assert f"{url}: cannot read chunk {key!r}" in str(caught.value), str(caught.value)
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------------------------- #
# 8. smaller: duplicate keys, exit codes, quiet exits
# --------------------------------------------------------------------------------------------- #
def test_duplicate_yaml_keys_are_errors(tmp_path):
    spec = tmp_path / "j.yaml"
    spec.write_text("input: {url: a.zarr}\nrun: {dir: r1}\nrun: {dir: r2}\n")
    res = alseg("validate", "--offline", str(spec))
    assert res.returncode == 2 and "found the key 'run' twice (first at line 2)" in res.stderr, res.stderr


def test_store_errors_exit_1_from_every_command_with_one_clean_line(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections are refused
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    spec = job(tmp_path / "j.yaml", "s3://bucket/v.zarr", str(tmp_path / "run"))
    for args in (["info", "s3://bucket/v.zarr"], ["pseudolabel", str(spec), "-q"], ["embed", str(spec), "-q"],
                 ["evaluate", "s3://bucket/v.zarr/labels/m", "s3://bucket/w.zarr"]):
        res = alseg(*args, env=env, timeout=120)
        assert res.returncode == 1, (args, res.stderr)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.stderr)
    res = alseg("validate", str(spec), env=env, timeout=120)
    assert res.returncode == 1 and "input.url" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def test_output_records_say_whether_an_output_is_complete(tmp_path, volume):
    from alseg.cli import main

    assert main(["pseudolabel", str(job(tmp_path / "j.yaml", str(volume), str(tmp_path / "run"))), "-q"]) == 0
    rec = output_record(tmp_path / "run" / "pseudolabels.zarr")
    assert rec["kind"] == "pseudolabels" and rec["complete"] is True
    assert open_volume(volume).provenance()["complete"] is True and output_record(volume)["kind"] == "synthetic"
    assert st.redact(str(volume)) == str(volume)
