"""Data-parallel MAE training: two gloo ranks on Ray actors follow one process with the same global batch."""

import pytest
import torch

from alseg.spec import parse_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec(tmp_path, run, workers, epochs=3):
    from alseg.synth import SynthParams, write_synthetic

    url = tmp_path / "v.zarr"
    if not url.exists():
        write_synthetic(url, SynthParams.preset("easy", shape=(16, 128, 128), seed=2))
    return parse_spec({"input": {"url": str(url)}, "run": {"dir": str(tmp_path / run)}, "annotation": {"method": "manual"},
                       "patches": {"shape_vox": [8, 64, 64]},
                       "embedding": {"model": "vit", "backbone_args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8},
                                     "img_size_px": 32, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
                                     "epochs": epochs, "batch_size": 8, "warmup_epochs": 1, "learning_rate": 1e-3},
                       "resources": {"backend": "ray", "embedding": {"cpus": 1, "gpus": 0, "workers": workers}}})


def test_two_ranks_follow_one_process(tmp_path, ray_cluster):
    from alseg.embed.train import load_bytes
    from alseg.pipeline.embedding import run_mae

    one = run_mae(_spec(tmp_path, "one", 1), progress=False)
    two = run_mae(_spec(tmp_path, "two", 2), runner=ray_cluster, progress=False)
    assert one["ranks"] == 1 and two["ranks"] == 2 and two["batch"] == one["batch"] == 8
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    a, b = load_bytes(one["checkpoint"])["model"], load_bytes(two["checkpoint"])["model"]
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            # the key bias has no true gradient (softmax ignores a shift shared by all keys): its
            # gradient is rounding noise, which Adam scales up to learning-rate-sized steps; compare
            # the query and value biases only
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=k)
    assert two["eval_after"] == pytest.approx(one["eval_after"], rel=1e-4)
    assert not list((tmp_path / "two" / "work" / "mae").glob("rendezvous-*")), "the rendezvous file is removed"
    too_many = _spec(tmp_path, "three", 3)
    from alseg.errors import SpecError

    with pytest.raises(SpecError, match="fits only 2"):
        run_mae(too_many, runner=ray_cluster, progress=False)


def test_a_rank_that_dies_fails_the_training_within_a_minute_and_the_rerun_resumes(tmp_path, ray_cluster):
    """SIGKILL one rank's process after the first per-epoch checkpoint: the training fails at once
    (the other rank stopped, not left in the collective for its 15-minute time-out); run again, it
    resumes from that checkpoint's epoch."""
    import os
    import signal
    import threading
    import time

    import psutil

    from alseg.embed.train import load_bytes
    from alseg.errors import WorkFailedError
    from alseg.pipeline.embedding import run_mae

    spec = _spec(tmp_path, "killed", 2, epochs=16)
    outcome: dict = {}

    def train():
        try:
            outcome["result"] = run_mae(spec, runner=ray_cluster, progress=False)
        except Exception as err:  # what the caller of the stage sees
            outcome["error"] = err

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 300
    while not (ckpts := list((tmp_path / "killed").rglob("checkpoint_latest.pt"))):
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.05)
    ranks = [p for p in psutil.Process().children(recursive=True) if "_Worker.run" in " ".join(p.cmdline())]
    assert len(ranks) == 2, [p.cmdline()[:2] for p in psutil.Process().children(recursive=True)]
    os.kill(ranks[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    thread.join(timeout=300)
    assert not thread.is_alive()
    took = time.monotonic() - killed
    print(f"the training failed {took:.1f} s after a rank was killed")
    assert took < 60 and "error" in outcome, outcome
    assert isinstance(outcome["error"], WorkFailedError) and "its group's 1 other worker(s) stopped" in str(outcome["error"])
    saved = load_bytes(str(ckpts[0]))["epoch"]
    assert 1 <= saved < 16, "killed mid-training"
    again = run_mae(spec, runner=ray_cluster, progress=False)
    assert again["resumed_from_epoch"] == saved and len(again["losses"]) == 16 and again["ranks"] == 2
