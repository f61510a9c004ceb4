"""Trained nnU-Net models in a run directory: published when training ends, fetched once per node.

A model is named by where it lives in the run directory. In a local run directory that is the
model folder itself, used as it is. On object storage it is the folder's files, uploaded after
training, with ``alseg-model.json`` (each file's size and sha256) written last: a folder without
it is an upload that did not finish, never a model. A worker that needs a model on another node
fetches it into the node's scratch folder (:func:`~alseg.nnunet.paths.scratch_root`) once (a lock
file makes the node's other workers wait for that copy), checks every file against the manifest,
and moves the whole folder into place; later workers on that node find it there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile

from alseg.errors import DataError
from alseg.io import store as st
from alseg.nnunet.paths import NnUNetDirs, dataset_name, scratch_root

MANIFEST = "alseg-model.json"
CHECKPOINT = "checkpoint_final.pth"
# training's intermediate checkpoints: the final one is the model
_NOT_PUBLISHED = frozenset({"checkpoint_latest.pth", "checkpoint_best.pth"})


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish_model(dirs: NnUNetDirs, folder: str) -> str:
    """The model folder ``folder`` (under ``dirs.root``) as the run directory names it: itself for a
    local run directory; else its files uploaded to ``dirs.url`` with the manifest written last."""
    if dirs.url is None:
        return folder
    url = dirs.published(folder)
    manifest_url = st.join(url, MANIFEST)
    if st.exists(manifest_url):  # the model being replaced: incomplete until the new manifest is written
        st.remove(manifest_url)
    files = {}
    for base, subdirs, names in os.walk(folder):
        subdirs.sort()
        for name in sorted(names):
            if name in _NOT_PUBLISHED:
                continue
            local = os.path.join(base, name)
            rel = os.path.relpath(local, folder).replace(os.sep, "/")
            files[rel] = {"bytes": os.path.getsize(local), "sha256": _sha256_file(local)}
            st.put_file(local, st.join(url, *rel.split("/")))
    if f"fold_all/{CHECKPOINT}" not in files:
        raise DataError(f"{folder}: no fold_all/{CHECKPOINT} to publish")
    st.write_json(manifest_url, {"format": 1, "files": files})
    return url


def unpublish_dataset(dirs: NnUNetDirs, dataset_id: int, name: str) -> None:
    """Remove the models an earlier run of this job published for a dataset (the run directory is
    the job's own, :func:`alseg.rundir.claim`); nothing for a local run directory."""
    if dirs.url is not None:
        st.remove(st.join(dirs.url, "results", dataset_name(dataset_id, name)))


def model_exists(model: str) -> bool:
    """Whether ``model`` (a local folder or a published URL) holds a finished model."""
    if st.is_local(model):
        return os.path.isfile(os.path.join(str(st.local_path(model)), "fold_all", CHECKPOINT))
    return st.exists(st.join(model, MANIFEST))


def checkpoint_sha256(model: str) -> str:
    """sha256 of the model's final checkpoint: hashed where local, from the manifest where
    published (the same value, without reading the checkpoint again)."""
    if st.is_local(model):
        return _sha256_file(os.path.join(str(st.local_path(model)), "fold_all", CHECKPOINT))
    try:
        return str(st.read_json(st.join(model, MANIFEST))["files"][f"fold_all/{CHECKPOINT}"]["sha256"])
    except (KeyError, TypeError) as err:
        raise DataError(f"{st.redact(model)}/{MANIFEST}: no checksum of fold_all/{CHECKPOINT}") from err


def local_model(model: str) -> str:
    """A local folder holding ``model``: the folder itself when local; else this node's copy,
    fetched and checked against the manifest the first time a worker here asks for it."""
    if st.is_local(model):
        return str(st.local_path(model))
    manifest_url = st.join(model, MANIFEST)
    if not st.exists(manifest_url):
        raise DataError(f"no finished model at {st.redact(model)} (no {MANIFEST}: its training or upload did not "
                        "finish); rerun the stage that trains it")
    raw = st.read_bytes(manifest_url)
    try:
        files = {str(rel): str(meta["sha256"]) for rel, meta in json.loads(raw)["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{st.redact(manifest_url)}: not a model manifest ({type(err).__name__}); rerun the stage that "
                        "trains it") from None
    if any(rel.startswith("/") or ".." in rel.split("/") for rel in files):
        raise DataError(f"{st.redact(manifest_url)}: names a file outside its model folder")
    cache = os.path.join(scratch_root(), "models", hashlib.sha256(raw).hexdigest()[:16])
    # results/<dataset>/<trainer folder>: nnU-Net's results layout, which its predictor expects
    dest = os.path.join(cache, *model.rstrip("/").split("/")[-3:])
    if os.path.isfile(os.path.join(dest, MANIFEST)):
        return dest
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the workers of a node fetch one copy between them
        if not os.path.isfile(os.path.join(dest, MANIFEST)):
            _fetch(model, files, raw, cache, dest)
    return dest


def _fetch(model: str, files: dict[str, str], raw: bytes, cache: str, dest: str) -> None:
    tmp = tempfile.mkdtemp(prefix="fetch-", dir=cache)
    try:
        for rel, sha in files.items():
            local = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            st.get_file(st.join(model, *rel.split("/")), local)
            if _sha256_file(local) != sha:
                raise DataError(f"{st.redact(model)}/{rel}: its sha256 differs from the model's {MANIFEST} (the file "
                                "changed or was damaged after training); rerun the stage that trains it")
        with open(os.path.join(tmp, MANIFEST), "wb") as fh:  # last: a copy with it is whole
            fh.write(raw)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.isdir(dest):  # a copy left without its manifest (a fetch killed half-way)
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
