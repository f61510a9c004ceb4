"""The embedding-quality measures against scikit-learn and plain loops."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from alseg.embed import quality as q


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 12))
    y = x[:, 0] * 0.8 - x[:, 3] * 0.5 + rng.normal(scale=0.6, size=90)
    return x, y


def test_ridge_matches_sklearn_ridgecv_on_standardised_features(data):
    x, y = data
    train, test = np.arange(70), np.arange(70, 90)
    ref = make_pipeline(StandardScaler(), RidgeCV(alphas=q.ALPHAS)).fit(x[train], y[train]).predict(x[test])
    np.testing.assert_allclose(q._ridge_fit_predict(x[train], y[train], x[test]), ref, rtol=1e-6, atol=1e-8)


def test_cross_validated_r2_matches_a_plain_loop(data):
    x, y = data
    mean, std = q.ridge_r2(x, y, folds=5, repeats=3, seed=1)
    rng, scores = np.random.default_rng(1), []
    for _ in range(3):  # the same shuffles, sklearn's model in each fold
        pred = np.empty_like(y)
        for test in np.array_split(rng.permutation(len(y)), 5):
            train = np.setdiff1d(np.arange(len(y)), test)
            pred[test] = make_pipeline(StandardScaler(), RidgeCV(alphas=q.ALPHAS)).fit(x[train], y[train]).predict(x[test])
        scores.append(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert mean == pytest.approx(np.mean(scores), abs=1e-9) and std == pytest.approx(np.std(scores), abs=1e-9)
    assert mean > 0.4  # the signal is there
    noise = np.random.default_rng(2).normal(size=x.shape)
    assert q.ridge_r2(noise, y)[0] < 0.1  # and not in noise


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, size=60).astype(float)
    positive = rng.random(60) < 0.4
    assert q.auc(score, positive) == pytest.approx(roc_auc_score(positive, score))


def test_spread_measures(data):
    x, y = data
    ev = PCA().fit(x).explained_variance_
    assert q.participation_ratio(x) == pytest.approx(ev.sum() ** 2 / (ev**2).sum())
    s = cosine_similarity(x)
    assert q.mean_cosine(x) == pytest.approx((s.sum() - np.trace(s)) / (len(x) * (len(x) - 1)))
    # nearest neighbours by cosine, written as a loop
    nearest = [max((j for j in range(len(x)) if j != i), key=lambda j: s[i, j]) for i in range(len(x))]
    pairs = np.mean([abs(y[i] - y[j]) for i in range(len(y)) for j in range(len(y)) if i != j])
    assert q.neighbour_ratio(x, y) == pytest.approx(np.mean([abs(y[i] - y[n]) for i, n in enumerate(nearest)]) / pairs)
    # collinear rows: one direction, cosine 1
    line = np.outer(np.arange(1, 20), np.ones(5))
    assert q.participation_ratio(line) == pytest.approx(1.0) and q.mean_cosine(line) == pytest.approx(1.0)
