"""The run report: one self-contained HTML page and a Markdown twin of an active-learning run.

The pipeline describes a run with the frozen records of :mod:`alseg.report.model`
(:class:`RunSummary` and its parts) and calls :func:`write_report`; the report reads only the
URLs those records name. Layout: ``model`` (the records), ``sources`` (reading pictures, held-out
slices and the measurement table), ``figures`` (PNGs with matplotlib's Agg backend), ``content``
(the blocks both twins share), ``render`` (HTML, Markdown, writing through :mod:`alseg.io.store`).
"""

from alseg.report.model import OverlaySource, RoundResult, RunSummary, StageTiming, flatten_scores
from alseg.report.render import write_report

__all__ = ["OverlaySource", "RoundResult", "RunSummary", "StageTiming", "flatten_scores", "write_report"]
