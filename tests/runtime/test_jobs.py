"""`alseg submit / jobs / logs / stop` against a real Ray head with the Jobs API and token
authentication, started on 127.0.0.1 by this module and stopped by its own process ids."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from alseg.cli import main
from alseg.io.omezarr import open_volume
from alseg.runtime import jobs
from alseg.errors import SpecError
from alseg.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
# distinctive fake credentials in the head's environment and the submitter's: none may surface
FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "AKIAALSEGFAKE7Q2Z9XK", "AWS_SECRET_ACCESS_KEY": "alseg-fake-secret-5b1e0c9d3f"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(n: int) -> list[int]:
    """``n`` distinct free ports (each socket is held until all are picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _spec(folder: Path, name: str, volume: Path, **over) -> Path:
    d = {"name": name, "input": {"url": str(volume), "ground_truth": "mitochondria"}, "run": {"dir": str(folder / name)},
         "patches": {"shape_vox": [8, 32, 32], "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5}},
         "pseudolabel": {"method": "classical", "block_shape_vox": [8, 64, 64], "halo_px": 16, "min_size_vox": 20},
         "nnunet": {"device": "cpu", "plan_overrides": {"patch_size_vox": [8, 32, 32], "batch_size": 2, "n_stages": 3,
                                                         "features_per_stage": [4, 8, 16]},
                    "pretrain": {"epochs": 50, "iterations_per_epoch": 50}},
         "selection": {"method": "random", "budget": 1},
         "resources": {"backend": "serial", "nnunet": {"cpus": 1}}, **over}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


class Head:
    """A Ray head (Jobs API on 127.0.0.1, token authentication, 2 CPUs) in its own session, started
    by ``ray start --block`` and stopped by its process id; its temporary folder is short (Ray's
    socket paths have a length limit)."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="aj", dir="/tmp"))
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> None:
        port, dash, client, agent, autoscaler_metrics, dashboard_metrics = _ports(6)
        env = {**os.environ, "HOME": str(self.tmp / "home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO),
               "RAY_USAGE_STATS_ENABLED": "0", "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
               "DASHBOARD_METRIC_PORT": str(dashboard_metrics), **FAKE_KEYS}
        for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "ALSEG_JOB_SPEC"):
            env.pop(key, None)
        with open(self.tmp / "head.log", "a") as log:
            self.proc = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                                          "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                                          f"--dashboard-agent-listen-port={agent}", f"--temp-dir={self.tmp / 't'}", "--num-cpus=2",
                                          "--disable-usage-stats"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while True:  # ready when the Jobs API itself answers (not only the dashboard's version page)
            try:
                req = urllib.request.Request(f"{self.address}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"})
                urllib.request.urlopen(req, timeout=5).read()
                break
            except OSError:
                if not self.alive() or time.time() > deadline:
                    pytest.fail("the Ray head did not start:\n" + self.log_tail())
                time.sleep(1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of ``ray start``'s output and of the session's process logs: what a failure shows."""
        parts = [("head.log", self.tmp / "head.log")]
        logs = self.tmp / "t" / "session_latest" / "logs"
        parts += [(p.name, p) for p in sorted(logs.glob("*")) if p.suffix in (".log", ".out", ".err") and
                  p.name.startswith(("dashboard", "gcs_server", "raylet", "monitor", "log_monitor"))]
        out = []
        for name, path in parts:
            text = path.read_text(errors="replace") if path.is_file() else ""
            if text.strip():
                out.append(f"--- {name}\n{text[-chars:]}")
        return "\n".join(out)

    def stop(self) -> None:
        import psutil

        if self.proc is not None:
            if self.alive():
                os.kill(self.proc.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
            self.proc.wait(timeout=60)
        deadline = time.time() + 30
        while (left := [p for p in psutil.process_iter(["pid", "cmdline"]) if str(self.tmp) in " ".join(p.info["cmdline"] or [])]) \
                and time.time() < deadline:
            time.sleep(1)
        for p in left:  # our own leftovers, by pid
            p.kill()
        assert not left, f"the head left processes: {[p.info['cmdline'][:3] for p in left]}"


@pytest.fixture(scope="module")
def head():
    h = Head()
    try:
        h.start()
        yield h
    finally:
        h.stop()
        shutil.rmtree(h.tmp, ignore_errors=True)


def _on_a_live_head(head: Head, body: Callable[[Path], None], tmp_path: Path) -> None:
    """Run ``body`` against the head. Where the Ray head process itself died under it (outside
    alseg: its logs are printed), once more on a fresh head; any other failure fails at once."""
    for attempt in (1, 2):
        if not head.alive():
            head.start()
        try:
            return body(tmp_path / f"attempt-{attempt}")
        except Exception:
            time.sleep(5)  # `ray start --block` notices a dead process within a second or two
            if head.alive() or attempt == 2:
                raise
            print(f"the Ray head died during attempt {attempt}; its logs:\n{head.log_tail()}")
            try:
                head.stop()
            except AssertionError as err:  # leftovers were killed by pid; the retry goes on
                print(err)


def _until(c, job: str, states: tuple[str, ...], timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while (now := jobs.status(c, job)) not in states:
        assert time.time() < deadline, f"{job} still {now}"
        time.sleep(1)
    return now


@pytest.mark.slow
@pytest.mark.ray
def test_submit_two_follow_both_stop_a_third(head, tmp_path, capsys, monkeypatch):
    _on_a_live_head(head, lambda folder: _submit_two_follow_both_stop_a_third(head, folder, capsys, monkeypatch), tmp_path)


def _submit_two_follow_both_stop_a_third(head, tmp_path, capsys, monkeypatch):
    from alseg.pipeline.pseudolabels import run_pseudolabels
    from alseg.synth import SynthParams, write_synthetic

    address, token = head.address, head.token
    tmp_path.mkdir(parents=True)
    capsys.readouterr()
    volume = tmp_path / "v.zarr"
    write_synthetic(volume, SynthParams.preset("easy", shape=(16, 64, 64), seed=3))
    specs = [_spec(tmp_path, f"cell-{i}", volume, pseudolabel={"method": "classical", "block_shape_vox": [8, 64, 64],
                                                                "halo_px": 16, "min_size_vox": 20 + 10 * i})
             for i in (1, 2)]
    monkeypatch.setenv("ALSEG_TEST_TOKEN", token)
    for key, value in FAKE_KEYS.items():
        monkeypatch.setenv(key, value)
    cluster = ["--address", address, "--token-env", "ALSEG_TEST_TOKEN"]

    assert main(["submit", *map(str, specs), "--stage", "pseudolabel", "--wait", *cluster]) == 0
    out = capsys.readouterr().out
    ids = [line.split()[0] for line in out.splitlines() if line.startswith("alseg-cell-") and "from " in line]
    assert len(ids) == 2 and all(f"{i}: SUCCEEDED" in out for i in ids)
    # each job's output equals the same stage run here, in this process
    for spec_path, name in zip(specs, ("cell-1", "cell-2")):
        spec = load_spec(spec_path)
        here = parse_spec({**yaml.safe_load(spec_path.read_text()), "run": {"dir": str(tmp_path / f"{name}-here")}})
        ours = run_pseudolabels(here, progress=False)["url"]
        np.testing.assert_array_equal(open_volume(str(Path(spec.run.dir) / "pseudolabels.zarr")).read(),
                                      open_volume(ours).read())

    long = _spec(tmp_path, "long", volume)
    assert main(["submit", str(long), *cluster]) == 0
    third = capsys.readouterr().out.split()[0]
    c = jobs.client(address, "ALSEG_TEST_TOKEN")
    _until(c, third, ("RUNNING",))
    deadline = time.time() + 240
    while "pretrain" not in jobs.logs(c, third):  # the job got as far as nnU-Net's pretraining
        assert time.time() < deadline and jobs.status(c, third) == "RUNNING", jobs.logs(c, third)[-2000:]
        time.sleep(2)
    assert main(["stop", third, *cluster]) == 0
    assert "stopping" in capsys.readouterr().out
    assert _until(c, third, jobs.TERMINAL, timeout=60) == "STOPPED"
    assert not (tmp_path / "long" / "nnunet" / "pretrain.json").exists()

    assert main(["jobs", *cluster]) == 0
    listing = capsys.readouterr().out
    for job, state in ((ids[0], "SUCCEEDED"), (ids[1], "SUCCEEDED"), (third, "STOPPED")):
        assert any(line.startswith(job) and state in line for line in listing.splitlines()), listing
    assert main(["logs", ids[0], *cluster]) == 0 and "pseudo" in capsys.readouterr().out
    assert main(["stop", ids[0], *cluster]) == 0 and "already ended (SUCCEEDED)" in capsys.readouterr().out
    # what the cluster holds of the jobs: the spec and version in the runtime environment, no token, no local folder
    for job in c.list_jobs():
        assert set(job.runtime_env) == {"env_vars"} and token not in str(job.runtime_env) + str(job.metadata)
        assert set(job.runtime_env["env_vars"]) == {jobs.SPEC_ENV, jobs.VERSION_ENV, "RAY_USAGE_STATS_ENABLED"}
    # no credential anywhere: the jobs' records and logs, the submitter's output, every file the jobs
    # wrote, and every file of the head's Ray session (its processes' logs)
    seen = [str(job.runtime_env) + str(job.metadata) + jobs.logs(c, job.submission_id) for job in c.list_jobs()]
    seen.append(out + listing)
    files = [p for root in (tmp_path, head.tmp / "t") for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name.startswith("job-driver-") for p in files), "the session's logs are among the files read"
    assert FAKE_KEYS["AWS_SECRET_ACCESS_KEY"] in Path(f"/proc/{head.proc.pid}/environ").read_text(), "the cluster had the keys"
    for value in FAKE_KEYS.values():
        assert not [t for t in seen if value in t], f"{value} in a job's record or log"
        assert not [str(p) for p in files if value.encode() in p.read_bytes()], f"{value} in a file"


@pytest.mark.slow
@pytest.mark.ray
def test_a_wrong_or_missing_token_and_an_unknown_job_are_one_line_errors(head, capsys, monkeypatch):
    if not head.alive():
        head.start()
    address = head.address
    monkeypatch.setenv("ALSEG_TEST_TOKEN", "not-the-token")
    assert main(["jobs", "--address", address, "--token-env", "ALSEG_TEST_TOKEN"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused the request" in err and "not-the-token" not in err
    monkeypatch.delenv("ALSEG_TEST_TOKEN")
    assert main(["jobs", "--address", address, "--token-env", "ALSEG_TEST_TOKEN"]) == 1
    assert "refused the request" in capsys.readouterr().err
    monkeypatch.setenv("ALSEG_TEST_TOKEN", head.token)
    assert main(["logs", "alseg-none-00000000-000000", "--address", address, "--token-env", "ALSEG_TEST_TOKEN"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such job" in err


TILES = 32  # the final prediction's blocks: a 16 x 128 x 128 volume in blocks of 8 x 32 x 32


def _ours(head: Head, word: str) -> list:
    """Processes of this module's head (its descendants, by pid) whose command line holds ``word``."""
    import psutil

    out = []
    for p in psutil.Process(head.proc.pid).children(recursive=True):
        try:
            if word in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _tiles_done(run: Path) -> int:
    """Completion records of the final prediction's first phase (one per block)."""
    return len(list(run.glob("work/predict/final-*/predict-tiles/*.json")))


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_driver_resubmitted_reuses_stages_and_blocks_and_a_killed_worker_changes_nothing(head, tmp_path, capsys,
                                                                                                   monkeypatch):
    _on_a_live_head(head, lambda folder: _killed_driver_then_killed_worker(head, folder, capsys, monkeypatch), tmp_path)


def _killed_driver_then_killed_worker(head, tmp_path, capsys, monkeypatch):
    """The job's stages up to its last round's evaluation run here first; the submitted job predicts
    the volume on the head's Ray workers. Its driver is SIGKILLed mid-prediction, the spec
    resubmitted, and a prediction worker of that second job SIGKILLed mid-prediction: the second job
    reuses every finished stage and block (counted in its log), and its output equals an
    uninterrupted prediction with the same model."""
    from alseg.pipeline import run_job
    from alseg.pipeline.predict import run_predict
    from alseg.pipeline.records import read_record
    from alseg.synth import SynthParams, write_synthetic

    tmp_path.mkdir(parents=True)
    capsys.readouterr()
    volume = tmp_path / "v.zarr"
    write_synthetic(volume, SynthParams.preset("easy", shape=(16, 128, 128), seed=3))
    train = {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "final_validation": False}
    nnunet = {"device": "cpu", "plan_overrides": {"patch_size_vox": [8, 32, 32], "batch_size": 2, "n_stages": 3,
                                                  "features_per_stage": [4, 8, 16]}, "pretrain": train, "finetune": train}
    path = _spec(tmp_path, "resumed", volume, nnunet=nnunet,
                 prediction={"block_shape_vox": [8, 32, 32], "halo_vox": [2, 8, 8], "mirroring": True},
                 resources={"backend": "ray", "nnunet": {"cpus": 1}, "prediction": {"cpus": 1, "gpus": 0, "workers": 1}})
    d = yaml.safe_load(path.read_text())
    run = Path(d["run"]["dir"])
    here = parse_spec({**d, "resources": {"backend": "serial"}})
    before = [s.key for s in run_job(here, progress=False, until="evaluate-01", say=lambda _: None).states]
    assert before == ["pseudolabels", "pseudolabel-scores", "pretrain", "evaluate-00", "select-01", "annotate-01",
                      "finetune-01", "evaluate-01"]
    monkeypatch.setenv("ALSEG_TEST_TOKEN", head.token)
    cluster = ["--address", head.address, "--token-env", "ALSEG_TEST_TOKEN"]
    c = jobs.client(head.address, "ALSEG_TEST_TOKEN")

    def submit() -> str:
        assert main(["submit", str(path), *cluster]) == 0
        return capsys.readouterr().out.split()[0]

    def wait_tiles(job: str, at_least: int) -> int:
        deadline = time.time() + 300
        while (n := _tiles_done(run)) < at_least:
            assert time.time() < deadline and jobs.status(c, job) in ("PENDING", "RUNNING"), jobs.logs(c, job)[-3000:]
            time.sleep(0.2)
        return n

    # the first job: its driver SIGKILLed once a few blocks are predicted
    first = submit()
    wait_tiles(first, 4)
    drivers = _ours(head, "run-submitted")
    assert drivers, "no driver process found"
    for p in drivers:
        p.kill()
    assert _until(c, first, jobs.TERMINAL, timeout=60) == "FAILED"
    reused = _tiles_done(run)
    assert reused < TILES and not (run / "stages" / "predict.json").exists(), "the driver died after the prediction"
    deadline = time.time() + 60
    while _ours(head, "ray::_Worker"):  # the dead driver's prediction worker is gone
        assert time.time() < deadline, "the killed job's worker outlived it"
        time.sleep(0.5)

    # resubmitted: a prediction worker SIGKILLed once it has predicted blocks of its own
    second = submit()
    wait_tiles(second, reused + 2)
    workers = _ours(head, "ray::_Worker")
    assert len(workers) == 1, [p.cmdline() for p in workers]
    workers[0].kill()
    assert _tiles_done(run) < TILES, "the prediction ended before the worker was killed: nothing was tested"
    assert _until(c, second, jobs.TERMINAL) == "SUCCEEDED", jobs.logs(c, second)[-3000:]

    first_log, log = jobs.logs(c, first), jobs.logs(c, second)

    def reused_stages(text: str) -> list[str]:
        return [line.split("]")[0][1:] for line in text.splitlines() if line.startswith("[") and line.endswith("done before, reused")]

    assert reused_stages(first_log) == reused_stages(log) == before, "both jobs reused every stage finished before"
    assert [line for line in log.splitlines() if line.startswith("[predict] ")][0].endswith(" ...")  # and ran the prediction
    assert f"alseg: nnU-Net tiles: {reused} of {TILES} done before, reused" in log, log[-3000:]
    assert sum("nnU-Net tiles: " in line and "failed (" in line and "retry 1 of 2" in line for line in log.splitlines()) == 1, \
        log[-3000:]
    assert all((run / "stages" / f"{k}.json").exists() for k in ("predict", "measure", "report"))

    # an uninterrupted prediction here with the same model: the same classes, mask and instances
    model = read_record(here, "finetune-01")["result"]
    ref = run_predict(here, model_folder=model["model_folder"], norm=model["norm"], out_dir=str(run / "reference"),
                      work_key="reference", progress=False)
    for name in ("classes", "mask", "instances"):
        np.testing.assert_array_equal(open_volume(str(run / "prediction" / f"{name}.zarr")).read(),
                                      open_volume(ref[name]).read(), err_msg=name)


def test_nothing_is_submitted_when_one_spec_of_a_batch_is_wrong(tmp_path, capsys):
    good = _spec(tmp_path, "good", tmp_path / "v.zarr")
    relative = tmp_path / "relative.yaml"
    relative.write_text(good.read_text().replace(str(tmp_path / "good"), "runs/good"))
    # no cluster listens there: the batch fails before any request
    assert main(["submit", str(good), str(relative), "--address", f"http://127.0.0.1:{_port()}"]) == 2
    err = capsys.readouterr().err
    assert "run.dir 'runs/good' is a relative path" in err


def test_a_submitted_job_refuses_a_node_with_another_alseg(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(jobs.SPEC_ENV, _spec(tmp_path, "x", tmp_path / "v.zarr").read_text())
    monkeypatch.setenv(jobs.VERSION_ENV, "0.0.0-other")
    assert main(["run-submitted", "pseudolabel"]) == 2
    assert "submitted with alseg 0.0.0-other" in capsys.readouterr().err
    monkeypatch.delenv(jobs.SPEC_ENV)
    assert main(["run-submitted", "run"]) == 2
    assert "inside a job that `alseg submit` made" in capsys.readouterr().err


def test_the_driver_asks_for_what_its_stage_needs(tmp_path):
    spec = load_spec(_spec(tmp_path, "r", tmp_path / "v.zarr", resources={
        "backend": "ray", "nnunet": {"cpus": 8, "gpus": 1, "memory_gb": 48}, "prediction": {"cpus": 4, "gpus": 1}}))
    assert jobs.driver_resources(spec, "run").gpus == 0.0  # nnunet.device: cpu
    gpu = spec.model_copy(update={"nnunet": spec.nnunet.model_copy(update={"device": "cuda"})})
    res = jobs.driver_resources(gpu, "pretrain")
    assert (res.cpus, res.gpus, res.memory_bytes) == (8.0, 1.0, 48 * 2**30)
    assert (jobs.driver_resources(gpu, "predict").cpus, jobs.driver_resources(gpu, "predict").gpus) == (1.0, 0.0)  # Ray workers
    serial = gpu.model_copy(update={"resources": gpu.resources.model_copy(update={"backend": "serial"})})
    assert (jobs.driver_resources(serial, "predict").cpus, jobs.driver_resources(serial, "predict").gpus) == (4.0, 1.0)


def test_every_path_of_a_submitted_spec_must_mean_the_same_on_the_nodes(tmp_path):
    base = yaml.safe_load(_spec(tmp_path, "p", tmp_path / "v.zarr").read_text())
    jobs.check_portable(parse_spec(base), "p.yaml")  # absolute paths pass
    for field, value in (("input.ground_truth", "gt/labels.zarr"), ("run.dir", "~/runs/p"),
                         ("input.url", "file://data/v.zarr")):
        d = yaml.safe_load(yaml.safe_dump(base))
        section, key = field.split(".")
        d[section][key] = value
        with pytest.raises(SpecError, match=f"{field} '{value}' is a"):
            jobs.check_portable(parse_spec(d), "p.yaml")


def test_a_cluster_that_drops_the_connection_mid_request_is_a_one_line_error(tmp_path, capsys):
    """A server on 127.0.0.1 that answers Ray's version check like a Jobs API and then closes every
    other request without an answer (a head going down mid-request): each command fails with one
    line naming the job or listing, never an internal error."""
    import http.server
    import json
    import threading

    import ray

    class Dropping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.startswith("/api/version"):
                body = json.dumps({"version": "4", "ray_version": ray.__version__, "ray_commit": "0"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.close_connection = True

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dropping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        spec = _spec(tmp_path, "dropped", tmp_path / "v.zarr")
        for argv, says in ((["submit", str(spec)], "submitting dropped:"), (["jobs"], "listing the cluster's jobs:"),
                           (["logs", "alseg-x-00000000-000000"], "job alseg-x-00000000-000000:")):
            assert main([*argv, "--address", address]) == 1
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and says in err and "internal error" not in err, err
    finally:
        server.shutdown()
        server.server_close()
