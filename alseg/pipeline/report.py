"""The last stages: the per-instance measurement table of the final prediction, and the report.

The report is built from the stage records alone (:class:`~alseg.report.RunSummary`): the spec,
each stage's wall time, the pseudo-label scores, the round table with each round's selection
picture, overlays on held-out slices and the measurement summary; written to
``<run dir>/report/report.html`` (self-contained) and ``report.md``.
"""

from __future__ import annotations

from typing import Any

import yaml

from alseg.geometry import Box
from alseg.io import store as st
from alseg.measure import measure_instances
from alseg.pipeline.common import input_volume
from alseg.pipeline.rounds import round_scores
from alseg.preflight import holdout_of
from alseg.report import OverlaySource, RoundResult, RunSummary, StageTiming, flatten_scores, write_report
from alseg.runtime import Runner
from alseg.spec import JobSpec, ground_truth_url


def run_measure(spec: JobSpec, prediction: dict[str, Any], *, runner: Runner, work_key: str) -> dict[str, Any]:
    """The measurement table of the final instances, beside them (``<run dir>/prediction/``)."""
    out = st.join(spec.run.dir, "prediction")
    res = measure_instances(prediction["instances"], out, block_shape=spec.postprocess.block_shape_vox, runner=runner,
                            work_dir=st.join(spec.run.dir, "work", "measure", work_key))
    return {k: res[k] for k in ("instances", "parquet", "csv")}


def run_report(spec: JobSpec, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write the run's report from its stage records; returns the URLs written."""
    image = input_volume(spec)
    rounds = [RoundResult(round=rs.round, n_annotated_patches=rs.annotated, pool_patches=rs.pool,
                          metrics=flatten_scores(rs.scores), selection_picture=rs.selection_picture,
                          selection_diagnostics=rs.selection_diagnostics)
              for rs in round_scores(spec, records)]
    pl = records.get("pseudolabel-scores")
    pred = (records.get("predict") or {}).get("result")
    gt = ground_truth_url(spec)
    region = holdout_of(spec, image.shape) or Box((0, 0, 0), image.shape)
    overlays = None if pred is None else OverlaySource(image_url=spec.input.url, prediction_url=pred["instances"],
                                                       ground_truth_url=gt, region=region, level=spec.input.level)
    measure = (records.get("measure") or {}).get("result")
    quality = (records.get("embed-quality") or {}).get("result")
    outputs = {} if pred is None else {"instances": pred["instances"], "classes": pred["classes"], "mask": pred["mask"]}
    if measure is not None:
        outputs.update({"measurements (Parquet)": measure["parquet"], "measurements (CSV)": measure["csv"]})
    summary = RunSummary(
        name=spec.name,
        spec_yaml=yaml.safe_dump(spec.job_content(), sort_keys=False),
        stages=[StageTiming(key, "done", rec.get("wall_s")) for key, rec in records.items()],
        rounds=rounds,
        pseudolabel_scores=None if pl is None else flatten_scores(pl["result"]["scores"]),
        overlays=overlays,
        measurements_csv=None if measure is None else measure["csv"],
        outputs={k: st.redact(v) for k, v in outputs.items()},
        embedding_quality=quality,
        run_dir=st.redact(spec.run.dir),
    )
    return write_report(summary, st.join(spec.run.dir, "report"))
