"""The run report: a self-contained HTML page and a Markdown twin, from a small synthetic run."""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from alseg.embed import picture
from alseg.errors import DataError
from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import open_volume
from alseg.report import OverlaySource, RoundResult, RunSummary, StageTiming, flatten_scores, write_report
from alseg.report.content import round_table
from alseg.synth import SynthParams, write_synthetic
from tests.helpers.need import require

SPEC = """input:
  url: /data/synthetic.zarr   # <script>alert("spec")</script> & more
run:
  dir: /runs/demo
selection:
  budget: 2
  rounds: 2
"""
# F1 of the paper's Tab. 1 (core-set 0, 64, 128) and made-up companions
METRICS = [
    {"f1@0.5": 0.4025, "f1@0.75": 0.30, "accuracy@0.75": 0.2521, "pq@0.5": 0.3628, "ap75": 0.20},
    {"f1@0.5": 0.5884, "f1@0.75": 0.41, "accuracy@0.75": 0.4170, "pq@0.5": 0.5284, "ap75": 0.31},
    {"f1@0.5": 0.6350, "f1@0.75": 0.45, "accuracy@0.75": 0.4652, "pq@0.5": 0.5750, "ap75": 0.35},
]
EXPECTED_PICTURES = {"learning_curve", "overlays", "instance_sizes", "selection_round_01", "selection_round_02"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, str]:
    """A synthetic volume with ground truth (used as the prediction too), selection pictures and a
    measurement table: every input a report reads."""
    root = tmp_path_factory.mktemp("run")
    image = str(root / "synthetic.zarr")
    write_synthetic(image, SynthParams.preset("easy", shape=(16, 64, 64), seed=1, mito_per_um3=30.0))  # dense: 5 instances
    labels = st.join(image, "labels", "mitochondria")
    gt = open_volume(labels)
    ids, counts = np.unique(gt.read(), return_counts=True)
    voxel_um3 = float(np.prod(gt.voxel_size_nm)) / 1e9
    table = str(root / "instances.csv")
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "voxels", "volume_um3", "touches_border"])
        for i, (k, c) in enumerate(zip(ids[1:], counts[1:])):
            w.writerow([int(k), int(c), c * voxel_um3, i % 2 == 0])
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(40, 2))
    pictures = [picture.draw(coords, [3 * r, 3 * r + 1], str(root / f"round-{r:02d}.png"), title=f"round {r}")
                for r in (1, 2)]
    return {"image": image, "labels": labels, "table": table, "pic1": pictures[0], "pic2": pictures[1],
            "n_instances": str(len(ids) - 1), "median": f"{np.median(counts[1:] * voxel_um3):.4g}"}


def _summary(run: dict[str, str]) -> RunSummary:
    rounds = [RoundResult(round=r, n_annotated_patches=2 * r, pool_patches=8, metrics=METRICS[r],
                          selection_picture=run[f"pic{r}"] if r else None) for r in (0, 1, 2)]
    return RunSummary(
        name="demo <run>",
        spec_yaml=SPEC,
        stages=[StageTiming("pseudolabel", "done", 12.34), StageTiming("pretrain", "reused", 95.0),
                StageTiming("round-02/finetune", "pending", None)],
        pseudolabel_scores={"f1@0.5": 0.7123, "pq@0.5": 0.6011, "foreground_iou": 0.8},
        rounds=rounds,
        overlays=OverlaySource(run["image"], run["labels"], run["labels"], Box((8, 0, 0), (16, 64, 64))),
        measurements_csv=run["table"],
        outputs={"instances": run["labels"], "measurements": run["table"]},
        created="2025-01-02 03:04 UTC",
    )


class _Page(HTMLParser):
    """Tags, image sources and text of a page (html.parser raises nothing; we collect)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])

    def handle_data(self, data):
        self.text.append(data)


def _is_png(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def _read(url: str) -> bytes:
    fs, path = st.filesystem(url)
    with fs.open(path, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_report_html_and_markdown(run, tmp_path, where):
    out = str(tmp_path / "report") if where == "local" else f"memory://alseg-report-{os.getpid()}/report"
    written = write_report(_summary(run), out)
    assert set(written) == EXPECTED_PICTURES | {"html", "markdown"}

    page_text = _read(written["html"]).decode("utf-8")
    page = _Page()
    page.feed(page_text)
    page.close()
    text = " ".join(page.text)
    # the paper's table: scores and % of the best round, annotated share per round
    for value in ("0.4025", "63.39", "0.5884", "92.66", "0.6350", "100.00", "0.2521", "54.19", "25.00", "AP-75"):
        assert value in text, value
    assert "Panoptic quality (IoU 0.5)" in text and "F1 (IoU 0.75)" in text
    assert "<strong>0.5884</strong>" in page_text  # F1@0.5 first reaches 90 % of the best in round 1
    # pseudo-labels, stages, measurements, outputs, spec
    for value in ("0.7123", "12.3 s", "1 min 35 s", "pending", f"instances {run['n_instances']}",
                  run["median"], "2025-01-02 03:04 UTC"):
        assert value in " ".join(text.split()), value
    # everything escaped, nothing fetched: no script, no external source
    assert "<script" not in page_text and "&lt;script&gt;" in page_text and "demo &lt;run&gt;" in page_text
    assert 'alert("spec")' in text and "details" in page.tags and "table" in page.tags
    assert not page.links and "link" not in page.tags and "script" not in page.tags
    assert len(page.images) == len(EXPECTED_PICTURES)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        _is_png(base64.b64decode(src.split(",", 1)[1], validate=True))

    md = _read(written["markdown"]).decode("utf-8")
    targets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(targets) == len(EXPECTED_PICTURES)
    for target in targets:
        assert not target.startswith(("/", "http", "data:"))
        _is_png(_read(st.join(out, target)))
    assert "```yaml\n" + SPEC.rstrip() + "\n```" in md
    assert "| F1 (IoU 0.5) | 0.4025 | **0.5884** | 0.6350 |" in md
    assert "| % of best | 63.39 | 92.66 | 100.00 |" in md
    assert "<script" not in md.split("```yaml")[0]


def test_report_is_deterministic(run, tmp_path):
    a = write_report(_summary(run), str(tmp_path / "a"))
    b = write_report(_summary(run), str(tmp_path / "b"))
    for key in a:
        assert _read(a[key]) == _read(b[key]), key


def test_minimal_report_and_paper_table():
    """A run with nothing but its spec still reports; the table follows the paper's Tab. 1."""
    summary = RunSummary(name="empty", spec_yaml="run: {dir: x}\n")
    out = "memory://alseg-report-minimal/out"
    written = write_report(summary, out)
    assert set(written) == {"html", "markdown"}
    assert "No round has been evaluated yet." in _read(written["html"]).decode()

    rounds = [RoundResult(round=r, n_annotated_patches=n, pool_patches=1024, metrics={"f1@0.5": f})
              for r, (n, f) in enumerate([(0, 0.4025), (64, 0.5884), (1024, 0.6350)])]
    table = round_table(rounds, ["f1@0.5"])
    assert [c.text for c in table.rows[1]] == ["% of pool annotated", "0.00", "6.25", "100.00"]
    assert [(c.text, c.bold) for c in table.rows[3]] == [("% of best", False), ("63.39", False),
                                                         ("92.66", False), ("100.00", False)]


def test_records_validate_and_flatten():
    with pytest.raises(ValueError, match="n_annotated_patches"):
        RoundResult(round=1, n_annotated_patches=9, pool_patches=8, metrics={})
    with pytest.raises(ValueError, match="metric name -> number"):
        RoundResult(round=1, n_annotated_patches=1, pool_patches=8, metrics={"f1@0.5": "high"})
    with pytest.raises(ValueError, match="uniquely"):
        r = RoundResult(round=1, n_annotated_patches=1, pool_patches=8, metrics={})
        RunSummary(name="x", spec_yaml="", rounds=[r, r])
    assert RoundResult(round=1, n_annotated_patches=2, pool_patches=8, metrics={}).fraction_annotated == 0.25
    nested = {"foreground_iou": 0.9, "objects_gt": 3, "objects_pred": 4, "ap75": 0.5,
              "at": {"0.5": {"threshold": 0.5, "tp": 2, "fp": 2, "fn": 1, "f1": 0.57, "panoptic_quality": 0.4}}}
    assert flatten_scores(nested) == {"foreground_iou": 0.9, "ap75": 0.5, "f1@0.5": 0.57, "pq@0.5": 0.4}


def test_unreadable_inputs_fail_before_writing(run, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,voxels\n1,10\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no 'volume_um3' column"):
        write_report(RunSummary(name="x", spec_yaml="", measurements_csv=str(bad)), str(out))
    missing = RoundResult(round=1, n_annotated_patches=1, pool_patches=8, metrics={"f1@0.5": 0.5},
                          selection_picture=str(tmp_path / "nope.png"))
    with pytest.raises(DataError, match="does not exist"):
        write_report(RunSummary(name="x", spec_yaml="", rounds=[missing]), str(out))
    assert not out.exists()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
def test_chromium_renders_report(run, tmp_path):
    """Headless Chromium draws the page: a screenshot with content, not a blank page."""
    browser = _chromium()
    require(browser is not None, "no Chromium or Chrome on PATH (apt-get install chromium)")
    from PIL import Image

    written = write_report(_summary(run), str(tmp_path / "report"))
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000", f"--screenshot={shot}",
           Path(written["html"]).resolve().as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert pixels.std() > 20, pixels.std()
    assert len(colours) > 200, len(colours)
    # the embedded pictures were drawn: many saturated (coloured) pixels, not only grey text
    spread = pixels.max(axis=2).astype(int) - pixels.min(axis=2)
    assert (spread > 60).sum() > 2000


def test_sections_are_shrunk_and_read_at_a_pyramid_level(tmp_path):
    """Wide sections shrink to <= 512 px with ids kept; a coarser level reads the region's image there."""
    from alseg.io.omezarr import create_image, create_labels
    from alseg.report.sources import read_sections

    url = str(tmp_path / "wide.zarr")
    image = create_image(url, shape=(8, 40, 1100), dtype="uint8", chunks=(8, 40, 550), voxel_size_nm=(30, 8, 8), levels=2)
    ramp = np.broadcast_to(np.arange(1100, dtype=np.uint8)[None, None, :] % 251, (8, 40, 1100))
    image.write(image.bounds, np.ascontiguousarray(ramp))
    coarse = open_volume(url, level=1, mode="r+")
    assert coarse.shape == (8, 20, 550)
    coarse.write(coarse.bounds, np.ascontiguousarray(ramp[:, ::2, ::2]))
    labels = create_labels(url, "pred")
    ids = np.zeros((8, 40, 1100), dtype=np.uint32)
    ids[:, 10:30, 100:400], ids[:, 5:15, 700:1000] = 7, 9
    labels.write(labels.bounds, ids)
    open_volume(st.join(url, "labels", "pred"), level=1, mode="r+").write(coarse.bounds, ids[:, ::2, ::2])

    pred = st.join(url, "labels", "pred")
    sections = read_sections(OverlaySource(url, pred, None, Box((2, 0, 0), (8, 40, 1100))))
    assert [s.z for s in sections] == [3, 5, 7]
    for s in sections:
        assert s.image.shape == s.prediction.shape == (13, 366) and s.ground_truth is None
        assert set(np.unique(s.prediction)) == {0, 7, 9}
        assert 0 <= s.image.min() and s.image.max() <= 1
    sections = read_sections(OverlaySource(url, pred, pred, Box((2, 10, 100), (8, 40, 1100)), level=1, n_slices=2))
    assert [s.z for s in sections] == [3, 6]
    assert sections[0].image.shape == sections[0].ground_truth.shape == (15, 500)
    with pytest.raises(DataError, match="outside"):
        read_sections(OverlaySource(url, pred, None, Box((0, 0, 0), (9, 40, 1100))))


def test_report_shows_each_rounds_selection_diagnostics():
    from alseg.pipeline.content import selection_diagnostics
    from alseg.report.model import selection_line

    pool = np.array([0, 0, 0, 0.1, 0.2, 0.4, 0.8, 0.05])
    diag = [selection_diagnostics(pool, picks) for picks in ([6, 0], [5, 4, 3])]
    rounds = [RoundResult(round=r, n_annotated_patches=n, pool_patches=8, metrics={"f1@0.5": f}, selection_diagnostics=d)
              for r, n, f, d in ((1, 2, 0.5, diag[0]), (2, 5, 0.6, diag[1]))]
    written = write_report(RunSummary(name="diag", spec_yaml="", rounds=rounds), "memory://alseg-report-diagnostics/out")
    page = _Page()
    page.feed(_read(written["html"]).decode())
    text = " ".join(" ".join(page.text).split())
    md = _read(written["markdown"]).decode()
    # pool mean 1.55 / 8 = 19.4 %; bins: empty {0, 0, 0}, then the quartiles of 0.05 .. 0.8 (edges 0.1, 0.2, 0.4):
    # {0.05, 0.1}, {0.2}, {0.4}, {0.8}. Round 1: (0.8 + 0) / 2 = 40 % in the empty and top bins; round 2:
    # 0.7 / 3 = 23.3 % in the three middle bins
    for line in ("Round 1: picks: 2, mean pseudo-label foreground 40.0 % (pool 19.4 %), content bins covered 2/5.",
                 "Round 2: picks: 3, mean pseudo-label foreground 23.3 % (pool 19.4 %), content bins covered 3/5."):
        assert line in text and line in md, line
    assert f"Round 1: {selection_line(diag[0])}." in md  # the CLI prints the same line
    with pytest.raises(ValueError, match="bins_total"):
        RoundResult(round=1, n_annotated_patches=1, pool_patches=8, metrics={}, selection_diagnostics={"picks": 1})


def test_report_shows_the_embedding_space_against_pixels_and_its_warnings():
    quality = {"source": "mae", "patches": 100, "pool": 128, "heldout_loss": 0.75, "heldout_mean_predictor": 0.98,
               "heldout_ratio": 0.75 / 0.98,
               "embedding": {"r2_pseudolabels": 0.41, "r2_pseudolabels_std": 0.02, "neighbour_ratio_pseudolabels": 0.66,
                             "participation_ratio": 7.5, "mean_cosine": 0.01},
               "pixels": {"r2_pseudolabels": 0.05, "r2_pseudolabels_std": 0.02, "neighbour_ratio_pseudolabels": 0.9,
                          "participation_ratio": 16.0, "mean_cosine": 0.0},
               "warnings": ["the mae embedding predicts the patches' ground-truth foreground no better than downsampled pixels do"]}
    written = write_report(RunSummary(name="emb", spec_yaml="", embedding_quality=quality), "memory://alseg-report-embedding/out")
    page = _Page()
    page.feed(_read(written["html"]).decode())
    text = " ".join(" ".join(page.text).split())
    md = _read(written["markdown"]).decode()
    for doc in (text, md):
        assert "Embedding space" in doc and "0.41" in doc and "0.05" in doc and "0.66" in doc
        assert "ratio 0.765" in doc  # 0.75 / 0.98, held-out loss over the mean predictor's
        assert "Warning: the mae embedding predicts" in doc
    assert "Embedding space" not in _read(write_report(RunSummary(name="none", spec_yaml=""), "memory://alseg-report-embedding/none")["markdown"]).decode()


def test_report_links_the_viewer_state_beside_it(tmp_path):
    run = tmp_path / "run"
    written = write_report(RunSummary(name="v", spec_yaml="", run_dir=str(run)), str(run / "report"))
    html_text, md = (Path(written[k]).read_text() for k in ("html", "markdown"))
    assert f"alseg view {run} --state-only" in md and f"alseg view {run} --state-only" in html_text
    hrefs = re.findall(r'<a href="([^"]+)">view/state.json</a>', html_text)
    assert hrefs == ["../view/state.json"] and "[view/state.json](<../view/state.json>)" in md
    # the link, resolved from the report's folder, is where `alseg view --state-only` writes
    assert (Path(written["html"]).parent / hrefs[0]).resolve() == (run / "view" / "state.json").resolve()
    assert "Viewer" not in _read(write_report(RunSummary(name="none", spec_yaml=""), "memory://alseg-report-viewer/none")["markdown"]).decode()
