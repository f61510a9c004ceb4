"""The blockwise engine: halo processing equals whole-volume processing; faults and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import blockwise_work as work
import numpy as np
import pytest
from scipy import ndimage

from alseg.blockwise import check_aligned, map_volume
from alseg.errors import SpecError, WorkFailedError
from alseg.io.omezarr import create_image, open_volume

SHAPE = (12, 50, 44)
SIGMA = 1.0
HALO = (4, 4, 4)  # >= scipy's kernel radius int(4 * sigma + 0.5)


def volume(tmp_path, name="in.zarr", chunks=(4, 16, 16)):
    data = np.random.default_rng(0).integers(0, 255, SHAPE).astype(np.uint8)
    vol = create_image(tmp_path / name, shape=SHAPE, dtype="uint8", chunks=chunks, voxel_size_nm=(30, 8, 8), levels=1)
    vol.write(vol.bounds, data)
    return str(tmp_path / name), data


def output(tmp_path, name, chunks=(4, 16, 16)):
    create_image(tmp_path / name, shape=SHAPE, dtype="float32", chunks=chunks, voxel_size_nm=(30, 8, 8), levels=1)
    return str(tmp_path / name)


def chunk_bytes(url: str) -> dict[str, bytes]:
    root = Path(url)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("c/**/*")) if p.is_file()}


@pytest.mark.parametrize("block_shape", [(4, 16, 16), (8, 32, 16), (12, 48, 48)])
def test_halo_blocks_equal_whole_volume_filter(tmp_path, block_shape):
    src, data = volume(tmp_path)
    out = output(tmp_path, f"out{block_shape[0]}.zarr")
    map_volume(work.smooth, [src], out, block_shape=block_shape, halo=HALO, pad_mode="edge", fn_kwargs={"sigma": SIGMA})
    whole = ndimage.gaussian_filter(data.astype(np.float32), SIGMA, mode="nearest")
    assert np.allclose(open_volume(out).read(), whole, atol=1e-4)


def test_misaligned_blocks_are_refused_before_any_write(tmp_path):
    src, _ = volume(tmp_path)
    out = output(tmp_path, "out.zarr")
    with pytest.raises(SpecError, match="multiples of the output's chunks"):
        map_volume(work.smooth, [src], out, block_shape=(4, 24, 16), halo=HALO, fn_kwargs={"sigma": SIGMA})
    assert chunk_bytes(out) == {}
    check_aligned((8, 32, 32), (4, 16, 16), (10, 40, 40))
    check_aligned((10, 40, 40), (4, 16, 16), (10, 40, 40))  # a block covering a whole axis is fine


def test_a_block_that_keeps_failing_is_named(tmp_path):
    src, _ = volume(tmp_path)
    out = output(tmp_path, "out.zarr")
    with pytest.raises(WorkFailedError) as info:
        map_volume(work.wrong_shape, [src], out, block_shape=(4, 16, 16), halo=HALO)
    assert info.value.key == "b_0_0_0" and "returned shape" in str(info.value)
    assert chunk_bytes(out) == {}, "nothing written for a failed block"


@pytest.mark.ray
def test_worker_killed_mid_block_output_is_byte_identical(tmp_path, ray_cluster):
    src, _ = volume(tmp_path)
    clean = output(tmp_path, "clean.zarr")
    map_volume(work.smooth, [src], clean, block_shape=(4, 16, 16), halo=HALO, fn_kwargs={"sigma": SIGMA})
    faulty = output(tmp_path, "faulty.zarr")
    state = tmp_path / "state"
    state.mkdir()
    map_volume(work.smooth_killing_once, [src], faulty, block_shape=(4, 16, 16), halo=HALO, runner=ray_cluster,
               work_dir=tmp_path / "run", fn_kwargs={"sigma": SIGMA, "state": str(state)})
    assert (state / "killed").exists(), "a worker was killed during the job"
    assert chunk_bytes(faulty) == chunk_bytes(clean) != {}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["serial", pytest.param("ray", marks=pytest.mark.ray)])
def test_driver_stopped_half_way_then_rerun_skips_finished_blocks(tmp_path, backend, request):
    import psutil

    src, _ = volume(tmp_path)
    clean = output(tmp_path, "clean.zarr")
    map_volume(work.smooth, [src], clean, block_shape=(4, 16, 16), halo=HALO, fn_kwargs={"sigma": SIGMA})
    target = output(tmp_path, "target.zarr")
    run_dir = tmp_path / "run"
    log = tmp_path / "calls.log"
    helpers = Path(work.__file__).parent
    runner = "None" if backend == "serial" else "RayRunner(num_cpus=2, progress=False)"
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(helpers)!r})
        import blockwise_work as work
        from alseg.blockwise import map_volume
        from alseg.runtime.ray_backend import RayRunner
        map_volume(work.smooth_logged, [{src!r}], {target!r}, block_shape=(4, 16, 16), halo={HALO!r}, runner={runner},
                   work_dir={str(run_dir)!r}, name="smooth", fn_kwargs={{"sigma": {SIGMA}, "log": {str(log)!r}, "delay": 0.3}})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(helpers), os.environ.get("PYTHONPATH", "")]))
    driver = subprocess.Popen([sys.executable, "-c", script], env=env)
    markers = run_dir / "smooth"
    deadline = time.time() + 180
    while time.time() < deadline and len(list(markers.glob("*.json"))) < 5 and driver.poll() is None:
        time.sleep(0.05)
    tree = psutil.Process(driver.pid).children(recursive=True)  # the driver's own Ray processes, if any
    os.kill(driver.pid, signal.SIGKILL)  # the driver dies half-way, without any clean-up
    driver.wait()
    # what the dead driver started is stopped by its process ids, nothing else
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if backend == "ray":
        assert tree, "the Ray driver started worker processes"
    done_before = len(list(markers.glob("*.json")))
    total = 3 * 4 * 3
    assert 5 <= done_before < total
    log.write_text("")
    rerun = request.getfixturevalue("ray_cluster") if backend == "ray" else None
    map_volume(work.smooth_logged, [src], target, block_shape=(4, 16, 16), halo=HALO, work_dir=run_dir, name="smooth",
               runner=rerun, fn_kwargs={"sigma": SIGMA, "log": str(log)})
    computed = len(log.read_text().split())
    assert computed == total - done_before, "the rerun computes exactly the blocks without a record"
    assert chunk_bytes(target) == chunk_bytes(clean)
