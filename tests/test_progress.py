"""Progress where stderr is not a terminal: a line per bar at most every LOG_INTERVAL_S, whatever
redraws the caller asks for (a loss in the postfix at every step), plus the first and final state."""

from __future__ import annotations

import io

from alseg import progress


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def test_a_bar_in_a_log_writes_its_first_and_final_state_not_a_line_per_step():
    out = io.StringIO()
    with progress.progress_bar(total=500, desc="training", unit="step", file=out) as bar:
        for step in range(500):
            bar.set_postfix(loss=1.0 / (step + 1))  # tqdm redraws at once on each
            bar.update(1)
    lines = _lines(out)
    assert len(lines) == 2 and lines[0].startswith("training:   0%") and "500/500" in lines[1], lines


def test_after_each_interval_one_more_line(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    out = io.StringIO()
    bar = progress.progress_bar(total=3, desc="blocks", file=out, mininterval=0)
    for _ in range(3):
        bar.set_postfix_str("x")
        bar.update(1)
    bar.close()
    assert len(_lines(out)) >= 4 and "3/3" in _lines(out)[-1]
