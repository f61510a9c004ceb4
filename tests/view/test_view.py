"""`alseg view` on a run that has only its pseudo-labels: what it shows and what it says is missing,
the state it writes, and the command itself (its URL, its one-line errors, stopped by its pid).

The rendering checks (a headless Chromium drawing the finished demo run, and a run on the S3
server) live beside those runs: tests/test_cli.py and tests/pipeline/test_object_storage_run.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from alseg.cli import main
from alseg.view.contents import run_contents
from alseg.view.state import segment_properties

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def early_run(tmp_path_factory):
    """A job stopped after its pseudo-labels (no model, no rounds, no prediction)."""
    from alseg.pipeline import run_job
    from alseg.spec import parse_spec
    from alseg.synth import SynthParams, write_synthetic

    tmp = tmp_path_factory.mktemp("view")
    write_synthetic(tmp / "v.zarr", SynthParams.preset("easy", shape=(16, 64, 64), seed=3))
    spec = parse_spec({"name": "early", "input": {"url": str(tmp / "v.zarr"), "ground_truth": "mitochondria"},
                       "run": {"dir": str(tmp / "run")},
                       "patches": {"shape_vox": [8, 32, 32], "holdout": {"kind": "fraction", "axis": "z", "fraction": 0.5}},
                       "pseudolabel": {"method": "classical", "block_shape_vox": [8, 64, 64], "halo_px": 16, "min_size_vox": 20},
                       "selection": {"method": "random", "budget": 1}, "resources": {"backend": "serial"}})
    run_job(spec, progress=False, until="pseudolabels", say=lambda _: None)
    return tmp


def test_a_run_without_predictions_shows_what_exists_and_says_what_is_missing(early_run):
    c = run_contents(str(early_run / "run"))
    assert c.image.url == str(early_run / "v.zarr") and c.shape == (16, 64, 64)
    assert [(l.name, l.kind) for l in c.segmentations] == [("pseudo-labels", "segmentation"), ("ground truth", "segmentation")]
    assert c.segmentations[1].url.endswith("v.zarr/labels/mitochondria") and c.instances_layer is None
    # the held-out region: the last half along z, from the spec
    assert [(b.name, [(a.box.start, a.box.stop) for a in b.boxes]) for b in c.box_layers] == \
        [("held-out region", [((8, 0, 0), (16, 64, 64))])]
    assert any("predicted instances" in m for m in c.missing) and any("core-set" in m for m in c.missing)
    # contrast from the coarsest level's statistics, within the image's range
    from alseg.io.omezarr import open_volume

    img = open_volume(str(early_run / "v.zarr")).read()
    assert img.min() <= c.contrast[0] < c.contrast[1] <= img.max()


def test_state_only_writes_the_state_into_the_run_and_starts_nothing(early_run, capsys):
    assert main(["view", str(early_run / "run"), "--state-only", "--files-port", "18091"]) == 0
    out, err = capsys.readouterr()
    assert "not in this run yet: predicted instances" in err
    state = json.loads((early_run / "run" / "view" / "state.json").read_text())
    assert state["displayDimensions"] == ["x", "y", "z"] and state["layout"] == "xy"
    assert list(state["dimensions"]) == ["x", "y", "z"]
    sources = {l["name"]: l.get("source") for l in state["layers"]}
    assert sources["image"] == "zarr3://http://127.0.0.1:18091/input/"
    assert sources["pseudo-labels"] == "zarr3://http://127.0.0.1:18091/run/pseudolabels.zarr/"
    assert sources["ground truth"] == "zarr3://http://127.0.0.1:18091/input/labels/mitochondria/"
    box = state["layers"][-1]["annotations"][0]
    assert box["pointA"] == [-0.5, -0.5, 7.5] and box["pointB"] == [63.5, 63.5, 15.5], "voxel edges, x y z"
    assert "alseg view" in out and "neuroglancer-demo" not in out, "local volumes: no public link"


def test_segment_properties_carry_the_measurement_table():
    props = segment_properties({3: {"volume_um3": 0.5, "surface_um2": 2.0, "voxels": 10.0},
                                1: {"volume_um3": 0.25, "surface_um2": 1.0, "voxels": 5.0}})
    inline = props["inline"]
    assert props["@type"] == "neuroglancer_segment_properties" and inline["ids"] == ["1", "3"]
    columns = {p["id"]: p for p in inline["properties"]}
    assert columns["volume_um3"]["values"] == [0.25, 0.5] and columns["volume_um3"]["data_type"] == "float32"
    assert columns["label"]["type"] == "label" and columns["label"]["values"][1].startswith("3: 0.5 um3")


def test_an_unknown_round_and_a_folder_that_is_no_run_are_one_line_errors(early_run, tmp_path, capsys):
    assert main(["view", str(early_run / "run"), "--round", "2", "--state-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "round 2 has no predicted instances (rounds with them: none yet)" in err
    assert main(["view", str(tmp_path), "--state-only"]) == 1
    assert "not an alseg run directory" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_prints_one_url_serves_neuroglancer_and_stops_on_sigterm(early_run):
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alseg.cli", "view", str(early_run / "run"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith(f"http://127.0.0.1:{port}/v/"), (url, proc.stderr.read() if proc.poll() is not None else "")
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "neuroglancer" in page.lower()
        # a second viewer on the same port: one line, exit 1
        res = subprocess.run([sys.executable, "-m", "alseg.cli", "view", str(early_run / "run"), "--port", str(port)],
                             capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 1 and f"127.0.0.1:{port}" in res.stderr and res.stdout == "", res.stderr
        assert len([l for l in res.stderr.splitlines() if not l.startswith("not in this run yet")]) == 1, res.stderr
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)


def test_without_the_view_extra_the_command_says_how_to_install_it(early_run):
    code = ("import sys; sys.modules['neuroglancer'] = None\n"
            "from alseg.cli import main\n"
            f"sys.exit(main(['view', {str(early_run / 'run')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "pip install 'alseg[view]'" in res.stderr, res.stderr


def test_screenshot_renders_in_a_chromium_of_its_own_and_stops_it(early_run, tmp_path):
    import numpy as np
    import psutil
    from PIL import Image
    from viewing import browser_or_skip

    browser_or_skip()
    out = tmp_path / "view.png"
    res = subprocess.run([sys.executable, "-m", "alseg.cli", "view", str(early_run / "run"), "--screenshot", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and f"screenshot: {out}" in res.stdout, res.stderr[-2000:]
    pixels = np.asarray(Image.open(out).convert("L")).astype(float)
    assert pixels.shape == (768, 1024) and pixels.std() > 10, "the image layer was drawn"
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if "alseg-view-browser-" in " ".join(p.info["cmdline"] or [])]
    assert left == [], "the browser it started is stopped"
    before = out.read_bytes()
    again = subprocess.run([sys.executable, "-m", "alseg.cli", "view", str(early_run / "run"), "--screenshot", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "writes a new file only" in again.stderr and out.read_bytes() == before


def test_public_volumes_go_to_neuroglancer_directly_private_ones_through_the_file_server(s3_server, tmp_path):
    """Public: no credential in the URL, and an anonymous request from a page gets the file with CORS
    allowing any page (two local http servers: one that allows it, one that does not)."""
    import functools
    import http.server
    import threading

    from alseg.view.session import location_of, public_location, source_of

    (tmp_path / "v.zarr").mkdir()
    (tmp_path / "v.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')

    class Cors(http.server.SimpleHTTPRequestHandler):
        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            super().end_headers()

        def log_message(self, *args):
            pass

    class Plain(Cors):
        def end_headers(self):
            http.server.SimpleHTTPRequestHandler.end_headers(self)

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(h, directory=str(tmp_path))) for h in (Cors, Plain)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        open_url, closed_url = (f"http://127.0.0.1:{srv.server_address[1]}/v.zarr" for srv in servers)
        base = "http://127.0.0.1:9"
        roots = {"run": "s3://em-runs/run", "input": closed_url}
        assert public_location(open_url + "/") == open_url
        assert source_of(open_url, roots, base) == f"zarr3://{open_url}/"
        assert public_location(closed_url) is None, "no CORS for other pages: served locally"
        assert source_of(closed_url, roots, base) == "zarr3://http://127.0.0.1:9/input/"
        assert public_location(open_url.replace("http://", "http://user:pw@")) is None, "a credential never goes to the viewer"
        # a bucket behind a custom endpoint (here: moto's) is not one neuroglancer can reach itself
        assert public_location("s3://em-runs/run/pseudolabels.zarr") is None
        assert location_of("s3://em-runs/run/view/props", roots, base, probe="info") == "http://127.0.0.1:9/run/view/props"
        with pytest.raises(ValueError, match="not under any served root"):
            location_of(str(tmp_path / "elsewhere.zarr"), roots, base)
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def test_an_unreadable_volume_is_a_one_line_error(tmp_path, capsys):
    from alseg.rundir import claim
    from alseg.spec import parse_spec

    spec = parse_spec({"name": "gone", "input": {"url": str(tmp_path / "moved-away.zarr"), "ground_truth": "mitochondria"}, "run": {"dir": str(tmp_path / "run")},
                       "patches": {"shape_vox": [8, 32, 32]}, "selection": {"method": "random", "budget": 1}})
    claim(spec)  # the run directory is the job's; its input is not there
    assert main(["view", str(tmp_path / "run"), "--state-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "moved-away.zarr" in err and "Traceback" not in err, err


def test_a_job_at_pyramid_level_1_shows_its_boxes_where_they_are_in_level_0(tmp_path):
    """Holdout and patches are boxes of the level the job works on; the viewer's space is level 0's
    voxels: the same physical extent (oracle: box x voxel size, in nanometres, at both levels)."""
    from alseg.io.omezarr import open_volume
    from alseg.rundir import claim
    from alseg.spec import parse_spec
    from alseg.synth import SynthParams, write_synthetic

    write_synthetic(tmp_path / "v.zarr", SynthParams.preset("easy", shape=(16, 512, 512), seed=1))
    level0, level1 = (open_volume(str(tmp_path / "v.zarr"), level=k) for k in (0, 1))
    assert level1.voxel_size_nm != level0.voxel_size_nm, "the volume has a coarser level"
    spec = parse_spec({"name": "l1", "input": {"url": str(tmp_path / "v.zarr"), "level": 1, "ground_truth": "mitochondria"},
                       "run": {"dir": str(tmp_path / "run")},
                       "patches": {"shape_vox": [8, 32, 32], "holdout": {"kind": "fraction", "axis": "y", "fraction": 0.25}},
                       "selection": {"method": "random", "budget": 1}})
    claim(spec)
    c = run_contents(spec.run.dir)
    (shown,) = [a.box for b in c.box_layers if b.name == "held-out region" for a in b.boxes]
    from alseg.preflight import holdout_of

    work = holdout_of(spec, level1.shape)
    for a in range(3):
        assert shown.start[a] * level0.voxel_size_nm[a] == pytest.approx(work.start[a] * level1.voxel_size_nm[a])
        assert shown.stop[a] * level0.voxel_size_nm[a] == pytest.approx(work.stop[a] * level1.voxel_size_nm[a])
    assert shown.stop[1] - shown.start[1] == 128 and c.shape == level0.shape, "a quarter of level 0's 512 rows"


def test_the_public_link_carries_the_whole_state_and_nothing_else(early_run):
    import urllib.parse

    from alseg.view.session import PUBLIC_VIEWER, public_link, session_state

    state = session_state(run_contents(str(early_run / "run")), "https://data.example.org", None)
    link = public_link(state)
    head, _, fragment = link.partition("#!")
    assert head == PUBLIC_VIEWER and "#" not in fragment and " " not in fragment
    assert json.loads(urllib.parse.unquote(fragment)) == state
