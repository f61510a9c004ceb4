"""Shared fixtures: an S3-compatible server on 127.0.0.1 (moto), a local Ray cluster, store URLs."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VNC_DIR = REPO.parent / "shared" / "data" / "vnc"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's threaded S3 server on loopback; credentials and endpoint through the AWS_* variables."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "alseg-test-key",
        "AWS_SECRET_ACCESS_KEY": "alseg-test-secret-do-not-log",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; returns its ``s3://`` URL."""
    import boto3

    name = f"alseg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    _clear_fsspec_cache()
    return f"s3://{name}"


def _clear_fsspec_cache() -> None:
    import fsspec

    for cls in (fsspec.get_filesystem_class("s3"),):
        cls.clear_instance_cache()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store_root(request, tmp_path):
    """A root URL to write stores under: a local folder, or a bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_bucket")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster per module (2 CPUs, loopback only), shut down after."""
    from alseg.runtime.ray_backend import RayRunner

    helpers = str(REPO / "tests" / "helpers")
    runner = RayRunner(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([helpers, str(REPO)])}}, progress=False)
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def vnc_dir() -> Path:
    if not (VNC_DIR / "raw").is_dir():
        pytest.fail(f"the VNC stack is missing at {VNC_DIR} (shared/data/vnc is part of the project)")
    return VNC_DIR


sys.path.insert(0, str(REPO / "tests" / "helpers"))
