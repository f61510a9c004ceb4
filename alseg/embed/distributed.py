"""Data-parallel MAE training: one rank per worker (a Ray actor per GPU), torch DDP between them.

Every rank holds the same training sections (shared once through the runner), builds the same
model from the same seed, draws the same global batches, masks and augmentations, and trains on
its share of each batch; DDP averages the gradients. Rank 0 writes the per-epoch checkpoint, so an
interrupted run resumes like a single-process one. Ranks meet through a file in the (shared, local)
run directory: no rendezvous server is started. The collective backend is NCCL on GPUs and gloo
on CPUs.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from alseg.errors import SpecError
from alseg.io import store as st


@dataclass(frozen=True)
class _RankJob:
    rank: int
    world: int
    init_file: str
    spec_json: dict[str, Any]
    slices: Any
    checkpoint_url: str
    signature: str
    seed: int
    device: str
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)


class MAERank:
    """A worker that runs one rank of a data-parallel MAE training per item."""

    def __call__(self, job: _RankJob) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        from alseg.embed.mae import build_mae
        from alseg.embed.train import train_mae
        from alseg.runtime import get_shared
        from alseg.spec import EmbeddingSpec

        os.environ.update(job.env)
        slices = get_shared(job.slices)
        backend = "nccl" if job.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"file://{job.init_file}", rank=job.rank, world_size=job.world,
                                timeout=timedelta(seconds=job.timeout_s))
        try:
            spec = EmbeddingSpec.model_validate(job.spec_json)
            torch.manual_seed(job.seed)
            model = build_mae(spec)
            return train_mae(model, slices, spec, checkpoint_url=job.checkpoint_url, signature=job.signature, seed=job.seed,
                             device=job.device, rank=job.rank, world=job.world, progress=False)
        finally:
            dist.destroy_process_group()


def train_distributed(spec: Any, slices: Any, *, world: int, runner: Any, checkpoint_url: str, signature: str, seed: int,
                      device: str, rendezvous_dir: str, resources: Any = None, local: bool = True,
                      timeout_s: int = 900) -> dict[str, Any]:
    """Train with ``world`` ranks on ``runner`` (Ray); returns rank 0's training record. The trained
    weights are the ``model`` of the checkpoint at ``checkpoint_url``."""
    if world < 2:
        raise SpecError("data-parallel training needs at least two ranks")
    if runner.name == "serial":
        raise SpecError("data-parallel MAE training needs the ray backend (resources.backend: ray)")
    if not st.is_local(rendezvous_dir):
        raise SpecError("data-parallel MAE training needs a local (shared) run directory: its ranks meet through a file there")
    folder = st.local_path(rendezvous_dir)
    folder.mkdir(parents=True, exist_ok=True)
    init_file = str(folder / f"rendezvous-{uuid.uuid4().hex}")  # a file store must not be reused
    env = {"GLOO_SOCKET_IFNAME": "lo"} if local and not device.startswith("cuda") else {}
    from alseg.runtime import WorkItem

    shared = runner.put(slices)
    items = [WorkItem(f"rank-{r}", _RankJob(r, world, init_file, spec.model_dump(mode="json"), shared, checkpoint_url,
                                            signature, seed, device, timeout_s, env)) for r in range(world)]
    try:
        # a rank that dies fails the training at once (the others stopped, not left waiting for the
        # collective time-out); a rerun resumes from rank 0's last per-epoch checkpoint
        results = runner.map_workers(MAERank, (), items, workers=world, resources=resources, desc=f"MAE training ({world} ranks)",
                                     gang=True)
    finally:
        if os.path.exists(init_file):
            os.remove(init_file)
    return {**results["rank-0"], "ranks": world}
