"""Planning a big job: measure a node (``alseg calibrate``), then project a job on a cluster (``alseg plan``).

:mod:`~alseg.plan.profile` holds the profile schema and its files, :mod:`~alseg.plan.calibrate`
the measurements (alseg's own stage code on a small synthetic volume), :mod:`~alseg.plan.counts`
the voxel-free counting of patches, blocks, tiles and schedules, :mod:`~alseg.plan.job` the cluster,
the plan records and what every stage's projection shares, :mod:`~alseg.plan.stages` one projection
per stage, and :mod:`~alseg.plan.model` the whole job's projection with its stated assumptions.

:func:`alseg.plan.calibrate.calibrate` is not re-exported here: it runs the stages (torch, nnU-Net),
and planning must not load them (``import alseg.plan.model`` stays light).
"""

from alseg.plan.job import Cluster, JobPlan, StagePlan
from alseg.plan.model import project, render
from alseg.plan.profile import Profile, default_profile, load_profile, save_profile

__all__ = ["Cluster", "JobPlan", "Profile", "StagePlan", "default_profile", "load_profile", "project", "render", "save_profile"]
