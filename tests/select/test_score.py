"""Patch uncertainty under a real (tiny) nnU-Net against nnU-Net's own probabilities and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from alseg.errors import SpecError
from alseg.geometry import Box, PatchGrid
from alseg.io.omezarr import open_volume
from alseg.nnunet import IntensityNorm, NnUNetDirs, export_dataset, plan_and_preprocess, train
from alseg.nnunet.predict import load_predictor
from alseg.select.score import PatchScorer, _ScoreJob, flips, score_patches
from alseg.spec import TrainingSpec
from alseg.synth import SynthParams, write_synthetic

pytestmark = pytest.mark.slow
TINY = {"patch_size_vox": [16, 32, 32], "batch_size": 2, "n_stages": 3, "features_per_stage": [4, 8, 16]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    url = str(root / "v.zarr")
    write_synthetic(url, SynthParams.preset("easy", shape=(16, 64, 64), seed=5))
    norm = IntensityNorm.of_volume(url)
    boxes = [Box((0, 0, 0), (16, 64, 64))]
    out = {"url": url, "norm": norm.to_json()}
    for name, dataset, extra in (("plain", 11, {}), ("dropout", 12, {"dropout_p": 0.3})):
        dirs = NnUNetDirs(str(root / f"nn-{name}"))
        export_dataset(dirs, dataset, name, url, url + "/labels/mitochondria", boxes, norm=norm)
        plan_and_preprocess(dirs, dataset, overrides={**TINY, **extra})
        out[name] = train(dirs, dataset, name, TrainingSpec(epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1,
                                                          final_validation=False), device="cpu")
    return out


def _nnunet_probs(folder, url, norm, box, flip=()):
    """nnU-Net's own whole-array prediction of one (optionally mirrored) patch: class probabilities."""
    pred = load_predictor(folder)
    vol = open_volume(url)
    data = IntensityNorm(**norm)(vol.read(box))
    data = np.ascontiguousarray(np.flip(data, axis=flip) if flip else data)
    _, probs = pred.predict_single_npy_array(data[None], {"spacing": list(vol.voxel_size_nm)}, None, None, True)
    return np.flip(probs, axis=tuple(a + 1 for a in flip)) if flip else probs


def test_plain_scores_match_nnunet_probabilities(models):
    url, norm = models["url"], models["norm"]
    patches = PatchGrid((16, 64, 64), (16, 32, 32)).patches()
    scores = score_patches(models["plain"], url, patches, norm=norm, mode="none")
    for p in patches:
        probs = _nnunet_probs(models["plain"], url, norm, p.valid).reshape(2, -1)
        assert scores["entropy"][p.id] == pytest.approx(scipy_entropy(probs, axis=0).mean(), rel=2e-3)
        assert scores["least_confidence"][p.id] == pytest.approx((1 - probs.max(axis=0)).mean(), rel=2e-3)
    assert np.all(scores["bald"] == 0)


def test_tta_bald_matches_mirrored_nnunet_predictions(models):
    url, norm = models["url"], models["norm"]
    patch = PatchGrid((16, 64, 64), (16, 32, 32)).patches()[1]
    scorer = PatchScorer(models["plain"], norm, mode="tta", samples=4)
    assert scorer.axes == (0, 1, 2) and flips(scorer.axes, 4) == [(), (0,), (1,), (2,)]
    got = scorer(_ScoreJob(url, 0, 1, patch.valid.start, patch.valid.stop))
    stack = np.stack([_nnunet_probs(models["plain"], url, norm, patch.valid, f).reshape(2, -1) for f in flips(scorer.axes, 4)])
    mean = stack.mean(axis=0)
    bald = scipy_entropy(mean, axis=0) - np.mean([scipy_entropy(s, axis=0) for s in stack], axis=0)
    # BALD is a small difference of two entropies, and nnU-Net's reference carries float16 rounding
    # (its window sums in half precision): each entropy agrees to 2e-3 of itself (checked here and
    # in the test above), so their difference agrees to about a thousandth of the entropy, not
    # always to 2 % of BALD itself (3.6e-5 of a 9e-4 BALD seen with one trained model)
    entropy = float(scipy_entropy(mean, axis=0).mean())
    print(f"BALD {got['bald']:.3g} (reference {bald.mean():.3g}), entropy {entropy:.3g}")
    assert got["bald"] == pytest.approx(bald.mean(), rel=2e-2, abs=max(1e-6, 1e-3 * entropy))
    assert got["bald"] > 0 and got["entropy"] == pytest.approx(entropy, rel=2e-3)


def test_mc_dropout_needs_dropout_layers_and_is_seeded(models):
    url, norm = models["url"], models["norm"]
    with pytest.raises(SpecError, match="no dropout layers"):
        PatchScorer(models["plain"], norm, mode="mc_dropout", samples=3)
    patches = PatchGrid((16, 64, 64), (16, 32, 32)).patches()[:2]
    a = score_patches(models["dropout"], url, patches, norm=norm, mode="mc_dropout", samples=3, seed=1)
    b = score_patches(models["dropout"], url, patches, norm=norm, mode="mc_dropout", samples=3, seed=1)
    assert np.array_equal(a["bald"], b["bald"]) and np.all(a["bald"] > 0)
    plain = score_patches(models["dropout"], url, patches, norm=norm, mode="none")
    assert not np.array_equal(plain["entropy"], a["entropy"])  # dropout on changes the predictions


def test_scores_stage_feeds_the_uncertainty_strategies(models, tmp_path):
    from alseg.spec import parse_spec
    from alseg.pipeline.selection import run_scores, run_select

    def spec(selection, overwrite=False):  # a second selection in the same run dir takes it over (run.overwrite)
        return parse_spec({"input": {"url": models["url"]}, "run": {"dir": str(tmp_path / "run"), "overwrite": overwrite},
                           "annotation": {"method": "manual"}, "patches": {"shape_vox": [8, 32, 32], "holdout": None},
                           "selection": selection})

    s = spec({"method": "bald", "budget": 2, "samples": 3})
    res = run_scores(s, model_folder=models["plain"], norm=models["norm"], progress=False)
    assert res["mode"] == "tta" and len(res["scores"]["bald"]) == 8 and not res["reused"]
    assert run_scores(s, model_folder=models["plain"], norm=models["norm"], progress=False)["reused"]
    sel = run_select(s, scores=res["scores"], progress=False)
    assert sel["patch_ids"] == np.argsort(-np.asarray(res["scores"]["bald"]), kind="stable")[:2].tolist()
    ent = spec({"method": "entropy", "budget": 3}, overwrite=True)
    plain = run_scores(ent, model_folder=models["plain"], norm=models["norm"], progress=False)
    assert plain["mode"] == "none"
    np.testing.assert_allclose(plain["scores"]["entropy"], res["scores"]["entropy"], rtol=0.5)  # same model, no flips
