"""The default embedding separates patches that differ by construction (with and without
mitochondria, on two textures of equal mean and contrast), where a space that learned nothing
would not: cross-validated AUC against the constructed truth."""

import numpy as np
import pytest

from alseg.embed.quality import cv_auc
from alseg.spec import parse_spec
from tests.helpers.two_kinds import PATCH, two_kinds_volume

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("two") / "two.zarr")
    labels = two_kinds_volume(url)
    return url, labels


def _spec(url, run, **embedding):
    return parse_spec({"input": {"url": url, "ground_truth": "mitochondria"}, "run": {"dir": str(run)},
                       "patches": {"shape_vox": list(PATCH), "holdout": None},
                       "embedding": {"epochs": 40, "batch_size": 32, "warmup_epochs": 2, "slices_per_patch": 3,
                                     "heldout_slices": 32, "rows_per_chunk": 16, **embedding},
                       "selection": {"method": "kcenter", "budget": 4}})


def _truth(boxes, labels):
    mito = np.array([labels[b[0]:b[3], b[1]:b[4], b[2]:b[5]].any() for b in boxes])
    coarse = np.array([b[2] >= labels.shape[2] // 2 for b in boxes])
    return mito, coarse


def test_default_embedding_separates_patches_with_mitochondria(volume, tmp_path):
    from alseg.embed import EmbeddingStore
    from alseg.pipeline.embedding import run_embed

    url, labels = volume
    info = run_embed(_spec(url, tmp_path / "run"), progress=False)
    store = EmbeddingStore.open(info["url"])
    rows, boxes = store.load(), store.boxes
    mito, coarse = _truth(boxes, labels)
    assert len(rows) == 64 and mito.sum() == 32
    assert info["mae"]["heldout_ratio"] < 0.9, "the MAE learned more than each block's mean"
    assert cv_auc(rows, mito) >= 0.9
    for texture in (coarse, ~coarse):  # within each texture, not through it
        assert cv_auc(rows[texture], mito[texture], folds=4) >= 0.85
