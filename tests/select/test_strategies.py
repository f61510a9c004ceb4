"""Selection strategies and uncertainty measures against plain computations (scipy, numpy)."""

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from alseg.errors import DataError, SpecError
from alseg.select import normalize_rows, patch_uncertainty, select_patches
from alseg.select.uncertainty import UncertaintySums
from alseg.spec import (BALDSelection, EntropySelection, HybridSelection, KCenterSelection, KMeansSelection,
                        LeastConfidenceSelection, RandomSelection)
from tests.helpers.kcenter_reference import reference_kcenter


def _probs(shape=(3, 4, 5, 6), seed=0):
    logits = np.random.default_rng(seed).standard_normal(shape)
    e = np.exp(logits)
    return e / e.sum(axis=0, keepdims=True)


def test_entropy_and_least_confidence_match_scipy():
    p = _probs()
    s = patch_uncertainty(p)
    assert s["entropy"] == pytest.approx(scipy_entropy(p.reshape(3, -1), axis=0).mean(), rel=1e-12)
    assert s["least_confidence"] == pytest.approx((1 - p.max(axis=0)).mean(), rel=1e-12)
    assert s["bald"] == pytest.approx(0.0, abs=1e-12)  # one prediction: no disagreement


def test_bald_is_mutual_information_and_adds_up_over_tiles():
    t = np.stack([_probs(seed=i) for i in range(5)])  # (T, C, z, y, x)
    s = patch_uncertainty(t, samples=True)
    mean = t.mean(axis=0).reshape(3, -1)
    expected = scipy_entropy(mean, axis=0) - np.mean([scipy_entropy(ti.reshape(3, -1), axis=0) for ti in t], axis=0)
    assert s["bald"] == pytest.approx(expected.mean(), rel=1e-10)
    assert s["bald"] > 0
    # a patch scored in two tiles equals the whole patch
    acc = UncertaintySums().add(t[:, :, :2], samples=True).add(t[:, :, 2:], samples=True)
    assert acc.scores() == pytest.approx(s, rel=1e-12)
    # identical samples carry no model uncertainty
    assert patch_uncertainty(np.stack([t[0]] * 4), samples=True)["bald"] == pytest.approx(0.0, abs=1e-12)


def test_probabilities_are_checked():
    with pytest.raises(DataError, match="sum to 1"):
        patch_uncertainty(np.full((2, 3, 3), 0.7))
    with pytest.raises(DataError, match="empty"):
        UncertaintySums().scores()


def test_uncertainty_strategies_rank_and_skip_annotated():
    rng = np.random.default_rng(1)
    n = 50
    scores = {k: rng.random(n) for k in ("entropy", "least_confidence", "bald")}
    scores["entropy"][[10, 11]] = 2.0  # a tie at the top: lower index first
    sel = select_patches(EntropySelection(budget=5), n=n, scores=scores, annotated=[3])
    expected = [i for i in np.argsort(-scores["entropy"], kind="stable") if i != 3][:5]
    assert sel.picks.tolist() == expected and sel.picks[:2].tolist() == [10, 11]
    lc = select_patches(LeastConfidenceSelection(budget=4), n=n, scores=scores)
    assert lc.picks.tolist() == np.argsort(-scores["least_confidence"], kind="stable")[:4].tolist()
    bald = select_patches(BALDSelection(budget=4), n=n, scores=scores, exclude=[int(np.argmax(scores["bald"]))])
    assert bald.picks.tolist() == np.argsort(-scores["bald"], kind="stable")[1:5].tolist()
    with pytest.raises(SpecError, match="needs 'bald' scores"):
        select_patches(BALDSelection(budget=4), n=n, scores={"entropy": scores["entropy"]})


def test_random_is_seeded_and_avoids_annotated():
    a = select_patches(RandomSelection(budget=10), n=30, annotated=range(15), seed=3).picks
    assert np.array_equal(a, select_patches(RandomSelection(budget=10), n=30, annotated=range(15), seed=3).picks)
    assert len(set(a.tolist())) == 10 and min(a) >= 15
    with pytest.raises(SpecError, match="exceeds"):
        select_patches(RandomSelection(budget=16), n=30, annotated=range(15))


def test_kcenter_strategy_from_annotated_set():
    x = normalize_rows(np.random.default_rng(2).standard_normal((400, 16), dtype=np.float32))
    sel = select_patches(KCenterSelection(budget=12, initial="annotated"), n=400, embeddings=x, annotated=[1, 2, 3])
    np.testing.assert_array_equal(sel.picks, reference_kcenter(x, 12, [], annotated=[1, 2, 3]))
    with pytest.raises(SpecError, match="needs embeddings"):
        select_patches(KCenterSelection(budget=12), n=400)


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.standard_normal((6, 16)).astype(np.float32)) * 5
    labels = np.repeat(np.arange(6), 50)
    return normalize_rows(centres[labels] + rng.standard_normal((300, 16)).astype(np.float32) * 0.3), labels


def test_kmeans_covers_every_cluster_and_is_deterministic():
    x, labels = _clusters()
    sel = select_patches(KMeansSelection(budget=6), n=300, embeddings=x, seed=0)
    assert sorted(labels[sel.picks].tolist()) == list(range(6))
    assert np.array_equal(sel.picks, select_patches(KMeansSelection(budget=6), n=300, embeddings=x, seed=0).picks)


def test_hybrid_is_diverse_among_the_uncertain():
    x, labels = _clusters(1)
    score = np.where(labels < 3, 1.0, 0.0) + np.linspace(0, 0.01, 300)  # clusters 0-2 uncertain
    sel = select_patches(HybridSelection(budget=3, shortlist_factor=50), n=300, embeddings=x, scores={"entropy": score})
    assert sorted(labels[sel.picks].tolist()) == [0, 1, 2]  # one per uncertain cluster, not the 3 top scores
    assert sel.picks[0] == int(np.argmax(np.where(labels < 3, score, -1)))
    top3 = np.argsort(-score)[:3]
    assert len(set(labels[top3].tolist())) == 1


def test_kcenter_strategy_start_from_the_spec():
    x = normalize_rows(np.random.default_rng(5).standard_normal((400, 16), dtype=np.float32) + np.float32(0.2))
    central = select_patches(KCenterSelection(budget=4), n=400, embeddings=x, seed=1)  # the default: central
    assert central.detail["start"] == "central" and central.detail["random_starts"] == 0
    first = int(np.argmax(x @ x.mean(axis=0)))  # nearest the mean in cosine distance: the largest dot product
    np.testing.assert_array_equal(central.picks, reference_kcenter(x, 4, [first]))
    assert np.array_equal(central.picks, select_patches(KCenterSelection(budget=4), n=400, embeddings=x, seed=2).picks)
    rand = select_patches(KCenterSelection(budget=4, start="random"), n=400, embeddings=x, seed=1)
    assert rand.detail["start"] == "random" and rand.detail["random_starts"] == 3
    np.testing.assert_array_equal(rand.picks, reference_kcenter(x, 4, rand.picks[:3]))
    # later rounds: the annotated patches are the centres, the start does not apply
    later = select_patches(KCenterSelection(budget=4, start="outlier"), n=400, embeddings=x, annotated=[first])
    assert later.detail["start"] == "annotated"
    np.testing.assert_array_equal(later.picks, reference_kcenter(x, 4, [], annotated=[first]))


def test_foreground_random_draws_in_proportion_to_foreground():
    from alseg.spec import ForegroundRandomSelection

    fractions = np.array([0.0, 0.1, 0.3, 0.0, 0.6, 0.0])
    strategy = ForegroundRandomSelection(budget=1)
    firsts = np.array([select_patches(strategy, n=6, scores={"foreground": fractions}, seed=s).picks[0] for s in range(3000)])
    freq = np.bincount(firsts, minlength=6) / len(firsts)
    # the first pick of a weighted draw: P(i) = f_i / sum f (a plain computation, 3000 draws: +- 0.03)
    np.testing.assert_allclose(freq, fractions / fractions.sum(), atol=0.03)
    assert freq[[0, 3, 5]].sum() == 0, "patches without pseudo-label foreground are not drawn while others are left"
    # annotated patches are never drawn; too few with foreground: all of them, the rest uniformly
    sel = select_patches(ForegroundRandomSelection(budget=4), n=6, scores={"foreground": fractions}, annotated=[4], seed=1)
    assert 4 not in sel.picks and set(sel.picks[:2]) == {1, 2} and sel.detail["uniform_fill"] == 2
    assert len(set(sel.picks.tolist())) == 4
    same = select_patches(ForegroundRandomSelection(budget=4), n=6, scores={"foreground": fractions}, annotated=[4], seed=1)
    assert np.array_equal(sel.picks, same.picks), "seeded"
    # a threshold moves patches to the uniform fill
    sel = select_patches(ForegroundRandomSelection(budget=2, min_fraction=0.2), n=6, scores={"foreground": fractions}, seed=0)
    assert set(sel.picks) == {2, 4}
    with pytest.raises(SpecError, match="foreground"):
        select_patches(strategy, n=6, seed=0)
    with pytest.raises(SpecError, match="shape"):
        select_patches(strategy, n=6, scores={"foreground": fractions[:5]}, seed=0)


def test_foreground_aware_kcenter_covers_the_patches_with_mitochondria():
    """``foreground_min``: k-center over the patches whose pseudo-labels hold mitochondria only,
    equal to the plain greedy on that subset (its own central start); with too few of them left,
    k-center over all; ``None`` is the plain k-center."""
    rng = np.random.default_rng(7)
    x = normalize_rows(rng.standard_normal((60, 8), dtype=np.float32) + np.float32(0.3))
    fractions = np.where(rng.random(60) < 0.4, rng.random(60) * 0.2, 0.0)
    eligible = np.flatnonzero(fractions > 0.05)
    scores = {"foreground": fractions}
    sel = select_patches(KCenterSelection(budget=5, foreground_min=0.05), n=60, embeddings=x, scores=scores)
    sub = x[eligible]
    first = int(np.argmax(sub @ sub.sum(axis=0)))  # the central start among the eligible rows
    np.testing.assert_array_equal(sel.picks, eligible[reference_kcenter(sub, 5, [first])])
    assert sel.detail["foreground_only"] and np.all(np.asarray(sel.detail["foreground"]) > 0.05)
    plain = select_patches(KCenterSelection(budget=5), n=60, embeddings=x, scores=scores)
    assert not set(plain.picks.tolist()) <= set(eligible.tolist()), "the plain greedy picks empty patches here"
    assert "foreground_only" not in plain.detail
    # annotated patches are centres and never picked again; the rest still only among the eligible
    later = select_patches(KCenterSelection(budget=3, foreground_min=0.05), n=60, embeddings=x, scores=scores,
                           annotated=[int(eligible[0])])
    blocked = np.setdiff1d(np.arange(60), eligible)
    np.testing.assert_array_equal(later.picks, reference_kcenter(x, 3, [], annotated=[int(eligible[0])], exclude=blocked))
    # fewer eligible patches than the budget: k-center over all of them
    few = select_patches(KCenterSelection(budget=len(eligible) + 1, foreground_min=0.05), n=60, embeddings=x, scores=scores)
    assert not few.detail["foreground_only"]
    np.testing.assert_array_equal(few.picks, select_patches(KCenterSelection(budget=len(eligible) + 1), n=60, embeddings=x).picks)
    with pytest.raises(SpecError, match="foreground"):
        select_patches(KCenterSelection(budget=2, foreground_min=0.0), n=60, embeddings=x)


def test_foreground_min_at_its_neutral_value_keeps_stored_rounds_current():
    """A round's selection file written before ``foreground_min`` existed stays current: the
    signature of a k-center strategy without it is the digest the older code wrote (its strategy
    dump had no such key); any value is content."""
    import hashlib
    import json

    from alseg.pipeline.selection import selection_signature

    strategy = KCenterSelection(budget=4)
    before = {k: v for k, v in strategy.model_dump(mode="json").items() if k != "foreground_min"}
    fractions = np.array([0.0, 0.5])
    scores_digest = hashlib.sha256(json.dumps({"foreground": fractions.tolist()}, sort_keys=True).encode()).hexdigest()
    older = {"strategy": before, "embeddings": "abc", "annotated": [3], "seed": 7, "scores": scores_digest}
    want = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()
    assert selection_signature(strategy, "abc", [3], 7, {"foreground": fractions}) == want
    aware = KCenterSelection(budget=4, foreground_min=0.0)
    assert selection_signature(aware, "abc", [3], 7, {"foreground": fractions}) != want
