"""The runtime: the same tests on the serial backend and on a local Ray cluster (127.0.0.1)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest
import runtime_work as work

from alseg.errors import SpecError, WorkFailedError
from alseg.runtime import CompletionMarkers, Resources, SerialRunner, WorkItem, make_runner


@pytest.fixture(params=["serial", pytest.param("ray", marks=pytest.mark.ray)])
def runner(request):
    if request.param == "serial":
        return SerialRunner(progress=False)
    return request.getfixturevalue("ray_cluster")


def items(n: int, payload=lambda i: i):
    return [WorkItem(f"item-{i}", payload(i)) for i in range(n)]


def test_map_returns_results_in_item_order(runner):
    out = runner.map(work.square, items(12)[::-1])
    assert list(out) == [f"item-{i}" for i in range(11, -1, -1)]
    assert out == {f"item-{i}": i * i for i in range(12)}


def test_transient_failures_are_retried(runner, tmp_path, caplog):
    out = runner.map(work.fail_first_times, items(6, lambda i: (str(tmp_path), i, 2 if i % 2 else 0)), desc="flaky")
    assert out == {f"item-{i}": i for i in range(6)}
    attempts = {i: int((tmp_path / f"attempts-{i}").read_text()) for i in range(6)}
    assert attempts == {i: 3 if i % 2 else 1 for i in range(6)}
    # each retry is one log line naming the item, its attempt and why
    retries = sorted(r.getMessage() for r in caplog.records if r.name == "alseg" and "retry" in r.getMessage())
    assert len(retries) == 6 and all(m.startswith("flaky: item-") and "failed (" in m for m in retries), retries
    assert [m for m in retries if m.startswith("flaky: item-3 ")][1].endswith("retry 2 of 2"), retries


def test_persistent_failure_names_the_item(runner, tmp_path):
    with pytest.raises(WorkFailedError) as info:
        runner.map(work.always_fail, [WorkItem("block-7-3-1", 7)])
    assert info.value.key == "block-7-3-1"
    assert info.value.attempts == runner.retries + 1
    assert "bad item 7" in str(info.value)


def test_completion_markers_skip_finished_items(runner, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="alseg")
    log = tmp_path / "calls.log"
    markers = CompletionMarkers(tmp_path / "markers")
    work_items = items(8, lambda i: (str(log), i))
    # a first, interrupted run: only half the items got done
    runner.map(work.record_call, work_items[:4], markers=markers)
    assert sorted(markers.load()) == [f"item-{i}" for i in range(4)]
    # the rerun computes only the other half, returns every result, and says what it reused
    out = runner.map(work.record_call, work_items, markers=markers, desc="calls")
    assert "calls: 4 of 8 done before, reused" in [r.getMessage() for r in caplog.records if r.name == "alseg"]
    assert out == {f"item-{i}": i + 1 for i in range(8)}
    calls = sorted(int(x) for x in log.read_text().split())
    assert calls == list(range(8)), "each item computed exactly once over both runs"
    assert runner.map(work.record_call, work_items, markers=markers) == out
    assert len(log.read_text().split()) == 8


def test_markers_on_object_storage(s3_bucket, tmp_path):
    markers = CompletionMarkers(f"{s3_bucket}/run/markers/task")
    runner = SerialRunner(progress=False)
    log = tmp_path / "calls.log"
    runner.map(work.record_call, items(3, lambda i: (str(log), i)), markers=markers)
    assert markers.load() == {f"item-{i}": i + 1 for i in range(3)}
    markers.clear()
    assert markers.load() == {}


def test_stateful_workers_load_once_per_worker(runner, tmp_path):
    log = tmp_path / "init.log"
    out = runner.map_workers(work.CountingModel, (str(log), 3), items(10), workers=2)
    assert {k: v[0] for k, v in out.items()} == {f"item-{i}": 3 * i for i in range(10)}
    inits = log.read_text().split("\n")[:-1]
    expected = 1 if runner.name == "serial" else 2
    assert len(inits) == expected, "a model is loaded once per worker, not per item"
    assert len({pid for _, pid in out.values()}) == expected


def test_duplicate_keys_and_bad_arguments(runner):
    with pytest.raises(ValueError, match="unique"):
        runner.map(work.square, [WorkItem("a", 1), WorkItem("a", 2)])
    with pytest.raises(SpecError):
        runner.map_workers(work.CountingModel, ("x", 1), items(1), workers=0)
    with pytest.raises(SpecError):
        Resources(cpus=-1)
    with pytest.raises(SpecError):
        make_runner("slurm")
    with pytest.raises(SpecError):
        SerialRunner(retries=-1)
    assert runner.map(work.square, []) == {}


@pytest.mark.ray
def test_ray_worker_killed_mid_item_is_retried(ray_cluster, tmp_path):
    out = ray_cluster.map(work.kill_first_time, items(4, lambda i: (str(tmp_path), i)))
    assert out == {f"item-{i}": 10 * i for i in range(4)}
    assert all((tmp_path / f"killed-{i}").exists() for i in range(4)), "each item's first worker was killed"


@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 2])
def test_ray_actor_killed_mid_item_is_retried(ray_cluster, tmp_path, workers):
    # every item kills its first actor: with one worker each death leaves none, and it is replaced;
    # with two, the survivor carries on until the last one dies, then that one is replaced
    out = ray_cluster.map_workers(work.KillingModel, (str(tmp_path),), items(4), workers=workers)
    assert {k: v for k, v in out.items()} == {f"item-{i}": 10 * i for i in range(4)}
    assert all((tmp_path / f"killed-{i}").exists() for i in range(4))


@pytest.mark.ray
def test_an_item_that_fails_for_good_while_others_run_fails_the_map_naming_it(ray_cluster):
    """Retries spent on one item while another worker is busy: the map fails naming the item (the
    busy worker is stopped), and with ``gang`` the first failure does so without a retry."""
    import time

    started = time.monotonic()
    with pytest.raises(WorkFailedError, match="item-0.*item 0 is bad"):
        ray_cluster.map_workers(work.FailOneSleepOthers, (30.0,), items(2), workers=2)
    with pytest.raises(WorkFailedError, match=r"item-0.*its group's 1 other worker\(s\) stopped"):
        ray_cluster.map_workers(work.FailOneSleepOthers, (30.0,), items(2), workers=2, gang=True)
    assert time.monotonic() - started < 30, "the sleeping item was not waited for"
    with pytest.raises(SpecError, match="must run at once"):
        ray_cluster.map_workers(work.FailOneSleepOthers, (0.0,), items(3), workers=3, gang=True)  # 2 CPUs


@pytest.mark.ray
def test_ray_bounds_work_in_flight(ray_cluster, tmp_path):
    log = tmp_path / "times.log"
    old = ray_cluster.max_in_flight
    ray_cluster.max_in_flight = 1
    try:
        ray_cluster.map(work.timed, items(4, lambda i: (str(log), i, 0.3)))
    finally:
        ray_cluster.max_in_flight = old
    spans = sorted(tuple(map(float, line.split()[1:3])) for line in log.read_text().splitlines())
    assert all(b[0] >= a[1] - 1e-3 for a, b in zip(spans, spans[1:])), "with max_in_flight=1 items never overlap"
    # without the bound, the 2-CPU cluster runs two at once
    log2 = tmp_path / "times2.log"
    ray_cluster.map(work.timed, items(4, lambda i: (str(log2), i, 0.5)))
    spans = sorted(tuple(map(float, line.split()[1:3])) for line in log2.read_text().splitlines())
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "items run in parallel on 2 CPUs"


@pytest.mark.ray
def test_ray_per_item_resources_and_shared_objects(ray_cluster):
    import numpy as np

    big = np.arange(1_000_000)
    ref = ray_cluster.put(big)
    out = ray_cluster.map(work.square, [WorkItem("a", 3, Resources(cpus=2)), WorkItem("b", 4, Resources(cpus=0.5))])
    assert out == {"a": 9, "b": 16}
    import ray

    assert np.array_equal(ray.get(ref), big)


@pytest.mark.ray
def test_ray_capacity_leaves_out_what_is_held(ray_cluster):
    """What another holder keeps (here an actor with 1 of the 2 CPUs, as a Ray job's driver keeps
    its entrypoint GPU) is not counted: a worker started for it could never be placed."""
    import time

    import ray

    one = Resources(cpus=1)
    assert ray_cluster.capacity(one) == 2

    @ray.remote(num_cpus=1)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    assert ray_cluster.capacity(one) == 1
    assert ray_cluster.capacity(Resources(cpus=2)) == 1, "at least one worker, which waits"
    ray.kill(holder)
    deadline = time.monotonic() + 30
    while ray_cluster.capacity(one) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_cluster.capacity(one) == 2


@pytest.mark.ray
def test_ray_listens_on_loopback_only(ray_cluster):
    import psutil

    ray_pids = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
    listening = [
        c for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in ray_pids
    ]
    assert listening, "expected Ray's servers among this process tree"
    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip.split("%")[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        return (mapped or addr).is_loopback

    exposed = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in listening if not loopback(c.laddr.ip)]
    assert exposed == [], f"Ray services listening beyond loopback: {exposed}"


def test_markers_reject_unsafe_keys(tmp_path):
    markers = CompletionMarkers(tmp_path)
    for key in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            markers.mark(key, 1)
    assert Path(tmp_path).exists()
