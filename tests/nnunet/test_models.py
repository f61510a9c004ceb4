"""Model folders through a run directory on object storage (moto's S3 server on 127.0.0.1):
published with a manifest written last, fetched once per node, checked against the manifest."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest

from alseg.errors import DataError
from alseg.io import store as st
from alseg.nnunet.models import MANIFEST, local_model, model_exists, publish_model, unpublish_dataset
from alseg.nnunet.paths import NnUNetDirs

pytestmark = pytest.mark.s3
FOLDER = ("results", "Dataset001_pseudo", "nnUNetTrainerAlseg__nnUNetPlans__3d_fullres")


def _model(root: Path) -> str:
    """A model folder as nnU-Net's training leaves it (made-up bytes; nothing here loads them)."""
    folder = root.joinpath(*FOLDER)
    (folder / "fold_all").mkdir(parents=True)
    (folder / "plans.json").write_text('{"configurations": {}}')
    (folder / "dataset.json").write_text("{}")
    (folder / "fold_all" / "checkpoint_final.pth").write_bytes(os.urandom(3 << 20))  # more than one 1 MiB piece
    (folder / "fold_all" / "checkpoint_latest.pth").write_bytes(b"intermediate")
    (folder / "fold_all" / "training_log.txt").write_text("epoch 0\n")
    return str(folder)


def _tree(folder: str) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def published(tmp_path, s3_bucket, monkeypatch):
    monkeypatch.setenv("ALSEG_SCRATCH", str(tmp_path / "node-a"))
    dirs = NnUNetDirs(str(tmp_path / "work"), url=st.join(s3_bucket, "run", "nnunet"))
    folder = _model(Path(dirs.root))
    return dirs, folder, publish_model(dirs, folder)


def test_a_published_model_is_fetched_whole_into_a_fresh_nodes_scratch(published, tmp_path, monkeypatch):
    dirs, folder, url = published
    assert url == st.join(dirs.url, *FOLDER) and model_exists(url)
    monkeypatch.setenv("ALSEG_SCRATCH", str(tmp_path / "node-b"))
    local = local_model(url)
    assert local.startswith(str(tmp_path / "node-b")) and local.endswith(os.path.join(*FOLDER))
    expected = {k: v for k, v in _tree(folder).items() if not k.endswith("checkpoint_latest.pth")}
    got = _tree(local)
    assert got.pop(MANIFEST) and got == expected
    # once per node: a second call reads nothing more (the object store may even be gone)
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).delete_object(
        Bucket=url.split("/")[2], Key="/".join(url.split("/")[3:] + ["plans.json"]))
    assert local_model(url) == local


def test_a_local_model_is_used_where_it_is(tmp_path):
    folder = _model(tmp_path)
    assert local_model(folder) == folder and model_exists(folder)
    assert publish_model(NnUNetDirs(str(tmp_path)), folder) == folder


def test_a_changed_file_fails_naming_it_and_leaves_no_copy(published, tmp_path, monkeypatch):
    _, _, url = published
    st.write_bytes(st.join(url, "fold_all", "checkpoint_final.pth"), b"not the trained weights")
    monkeypatch.setenv("ALSEG_SCRATCH", str(tmp_path / "node-c"))
    with pytest.raises(DataError, match=r"fold_all/checkpoint_final.pth: its sha256 differs"):
        local_model(url)
    assert not [p for p in (tmp_path / "node-c").rglob("*") if p.is_file() and p.name != ".lock"]  # no partial copy


def test_an_unfinished_upload_is_no_model(published, tmp_path, monkeypatch):
    dirs, folder, url = published
    st.remove(st.join(url, MANIFEST))
    assert not model_exists(url)
    monkeypatch.setenv("ALSEG_SCRATCH", str(tmp_path / "node-d"))
    with pytest.raises(DataError, match="no finished model at .*no alseg-model.json"):
        local_model(url)
    # publishing again restores it; removing the dataset's published models removes it
    assert publish_model(dirs, folder) == url and model_exists(url)
    unpublish_dataset(dirs, 1, "pseudo")
    assert not model_exists(url) and not st.exists(st.join(dirs.url, "results", "Dataset001_pseudo"))


def test_a_manifest_naming_a_file_outside_its_folder_is_refused(published, tmp_path, monkeypatch):
    _, _, url = published
    st.write_json(st.join(url, MANIFEST), {"format": 1, "files": {"../../escape.pth": {"bytes": 1, "sha256": "0" * 64}}})
    monkeypatch.setenv("ALSEG_SCRATCH", str(tmp_path / "node-e"))
    with pytest.raises(DataError, match="outside its model folder"):
        local_model(url)
    st.write_bytes(st.join(url, MANIFEST), b"not json")
    with pytest.raises(DataError, match="not a model manifest"):
        local_model(url)


def test_a_scratch_folder_others_may_write_to_is_refused(tmp_path, monkeypatch):
    from alseg.errors import SpecError
    from alseg.nnunet.paths import scratch_root

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    monkeypatch.setenv("ALSEG_SCRATCH", str(shared))
    with pytest.raises(SpecError, match="nobody else may write to"):
        scratch_root()
    os.chmod(shared, 0o700)
    assert scratch_root() == str(shared)


def test_finetuning_takes_the_pretraining_plans_from_the_model_not_from_a_stale_scratch(tmp_path):
    import json

    from alseg.pipeline.finetune import _restore_pretraining_plans

    folder = _model(tmp_path / "model")
    Path(folder, "plans.json").write_text(json.dumps({"plans": "of the pretrained model"}))
    Path(folder, "dataset_fingerprint.json").write_text("{}")
    dirs = NnUNetDirs(str(tmp_path / "scratch"), url="s3://bucket/run/nnunet")
    stale = Path(dirs.preprocessed, "Dataset001_pseudo")
    stale.mkdir(parents=True)
    (stale / "nnUNetPlans.json").write_text(json.dumps({"plans": "of an earlier pretraining"}))
    _restore_pretraining_plans(dirs, folder)
    assert json.loads((stale / "nnUNetPlans.json").read_text()) == {"plans": "of the pretrained model"}
    # a local run directory's own preprocessed plans are the pretraining's: left as they are
    local = NnUNetDirs(str(tmp_path / "scratch"))
    (stale / "nnUNetPlans.json").write_text(json.dumps({"plans": "local"}))
    _restore_pretraining_plans(local, folder)
    assert json.loads((stale / "nnUNetPlans.json").read_text()) == {"plans": "local"}
