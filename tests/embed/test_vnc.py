"""On the real VNC stack: the MAE learns, embeddings repeat bit for bit, k-center equals the reference."""

import numpy as np
import pytest

from alseg.spec import parse_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vnc_zarr(vnc_dir, tmp_path_factory):
    from alseg.ingest import ingest_vnc

    url = tmp_path_factory.mktemp("vnc") / "vnc.zarr"
    ingest_vnc(vnc_dir, url)
    return url


def _spec(url, run):
    return parse_spec({"input": {"url": str(url), "ground_truth": "mitochondria"}, "run": {"dir": str(run)},
                       "patches": {"shape_vox": [5, 128, 128]},
                       "embedding": {"model": "vit", "backbone_args": {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 8},
                                     "img_size_px": 48, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
                                     "epochs": 4, "batch_size": 32, "warmup_epochs": 1, "learning_rate": 1e-3,
                                     "max_train_slices": 320, "slices_per_patch": 3, "rows_per_chunk": 64},
                       "selection": {"method": "kcenter", "budget": 40}})


def test_vnc_embeddings_learn_repeat_and_select_like_the_reference(vnc_zarr, tmp_path):
    from alseg.embed import EmbeddingStore
    from alseg.select import kcenter_greedy
    from alseg.pipeline.embedding import run_embed
    from tests.helpers.kcenter_reference import reference_kcenter

    first = run_embed(_spec(vnc_zarr, tmp_path / "a"), progress=False)
    assert first["mae"]["eval_after"] < first["mae"]["eval_before"]
    second = run_embed(_spec(vnc_zarr, tmp_path / "b"), progress=False)
    rows = EmbeddingStore.open(first["url"]).load()
    assert rows.shape == (128, 48)  # 4 x 8 x 8 patches, half of them in the default held-out region
    assert np.array_equal(rows, EmbeddingStore.open(second["url"]).load()), "two runs give bit-identical embeddings"
    for seed in (0, 1):
        res = kcenter_greedy(rows, 40, seed=seed)
        np.testing.assert_array_equal(res.picks, reference_kcenter(rows, 40, res.picks[:3]))
    ann = list(range(0, 128, 8))
    res = kcenter_greedy(rows, 40, annotated=ann)
    np.testing.assert_array_equal(res.picks, reference_kcenter(rows, 40, [], annotated=ann))
