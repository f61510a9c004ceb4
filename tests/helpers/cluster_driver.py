"""A job's driver in a process of its own (as on a cluster), for tests that start a Ray cluster:
``python cluster_driver.py JOB.json`` runs the pseudo-label stage and/or a prediction of the spec
in the JSON (``{"spec": {...}, "pseudolabels": bool, "predict": {"model", "norm", "out_dir",
"work_key"} | null}``)."""

from __future__ import annotations

import json
import sys

from alseg.pipeline.predict import run_predict
from alseg.pipeline.pseudolabels import run_pseudolabels
from alseg.spec import parse_spec


def main(path: str) -> None:
    with open(path) as fh:
        job = json.load(fh)
    spec = parse_spec(job["spec"])
    if job.get("pseudolabels"):
        run_pseudolabels(spec, progress=False)
    p = job.get("predict")
    if p:
        run_predict(spec, model_folder=p["model"], norm=p["norm"], out_dir=p.get("out_dir"), work_key=p.get("work_key"),
                    progress=False)


if __name__ == "__main__":
    main(sys.argv[1])
