"""The job as a graph of stages (one module per stage) and the driver that runs and resumes it.

Stage functions take the validated :class:`~alseg.spec.JobSpec`, write their artefacts under
the run directory, and never import Ray (the runner comes from :mod:`alseg.runtime`).
"""

from alseg.pipeline.graph import JobOutcome, StageState, job_status, plan, run_job
from alseg.pipeline.rounds import AwaitingAnnotation

__all__ = ["AwaitingAnnotation", "JobOutcome", "StageState", "job_status", "plan", "run_job"]
