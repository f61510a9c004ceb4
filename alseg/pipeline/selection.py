"""Stage 4c: uncertainty scores of the pool and each round's picks, with what the picks contain.

Selection diagnostics: when the job has (complete) pseudo-labels, each round's record carries
``diagnostics`` (:func:`alseg.pipeline.content.selection_diagnostics`): the picks' pseudo-label
foreground fraction and content bins beside the whole candidate pool's. The pool's fractions are
read once per pseudo-label volume and pool (``<run dir>/selection/foreground-<key>.json``, keyed by
the volume's signature and the patch boxes). They describe the picks and never change them, so
they are not part of the selection's signature.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alseg.geometry import Box
from alseg.io import store as st
from alseg.io.omezarr import output_record
from alseg.nnunet.models import checkpoint_sha256
from alseg.pipeline.common import (device_for, digest, embedding_dir, input_volume, pretrain_record, pseudolabels_url,
                                   selection_url)
from alseg.pipeline.content import foreground_fractions, selection_diagnostics
from alseg.pipeline.embedding import run_embed
from alseg.rundir import claim
from alseg.spec import JobSpec, without_neutral_additions


def run_scores(spec: JobSpec, *, model_folder: str | None = None, norm: dict | None = None, runner: Any = None,
               progress: bool = True) -> dict[str, Any]:
    """Uncertainty of every candidate patch under a trained nnU-Net (the pretrained one unless
    ``model_folder`` and its ``norm`` are given): ``{"scores": {measure: list}, ...}``, kept in
    ``<run dir>/selection/scores-<signature>.json`` and reused while model and parameters stay."""

    from alseg import __version__
    from alseg.errors import SpecError
    from alseg.preflight import patch_grid_of
    from alseg.runtime import runner_from_spec
    from alseg.select.score import score_patches

    claim(spec)
    if model_folder is None:
        record = pretrain_record(spec, needed_by=f"selection.method {spec.selection.method!r} ranks patches by a "
                                 "trained model's uncertainty")
        model_folder, norm = record["model_folder"], record["norm"]
    if norm is None:
        raise SpecError("scoring with a given model folder needs its intensity normalisation")
    sel = spec.selection
    mode, samples = (sel.mode, sel.samples) if sel.method == "bald" else ("none", 1)
    image = input_volume(spec)
    patches = patch_grid_of(spec, image.shape).patches()
    signature = {"model": checkpoint_sha256(model_folder), "mode": mode, "samples": samples, "seed": spec.run.seed,
                 "input": st.redact(spec.input.url), "level": spec.input.level, "patches": spec.patches.model_dump(mode="json"),
                 "norm": norm, "alseg": __version__}
    sig_sha = digest(signature)[:16]
    url = st.join(spec.run.dir, "selection", f"scores-{sig_sha}.json")
    if st.exists(url):
        return {**st.read_json(url), "url": url, "reused": True}
    own = runner is None
    runner = runner or runner_from_spec(spec.resources, progress=progress)
    try:
        res, device = device_for(spec.resources.prediction, spec.nnunet.device, label="resources.prediction")
        workers = spec.resources.prediction.workers or runner.capacity(res)
        scores = score_patches(model_folder, spec.input.url, patches, norm=norm, mode=mode, samples=samples, seed=spec.run.seed,
                               level=spec.input.level, runner=runner, work_dir=st.join(spec.run.dir, "work", "score", sig_sha),
                               workers=workers, resources=res, device=device, missing_chunks=spec.input.missing_chunks)
    finally:
        if own:
            runner.close()
    record = {"signature": signature, "model_folder": model_folder, "mode": mode, "samples": samples,
              "scores": {k: v.tolist() for k, v in scores.items()}}
    st.write_json(url, record)
    return {**record, "url": url, "reused": False}


def annotated_before(spec: JobSpec, round_index: int) -> list[int]:
    """Patch ids selected in rounds ``1 .. round_index - 1`` (they must all exist)."""
    from alseg.errors import SpecError

    out: list[int] = []
    for r in range(1, round_index):
        url = selection_url(spec, r)
        if not st.exists(url):
            raise SpecError(f"selection round {r} is missing ({st.redact(url)}): select round {r} first")
        out += st.read_json(url)["patch_ids"]
    return out


def pool_foreground(spec: JobSpec, label_url: str, boxes: np.ndarray, *, progress: bool = True) -> tuple[np.ndarray, str | None]:
    """Foreground fraction of every pool patch (rows ``z0 y0 x0 z1 y1 x1`` of ``boxes``) in the label
    volume at ``label_url`` (on the grid of ``input.level``, as the pseudo-labels are), and its
    signature. Kept in ``<run dir>/selection/foreground-<key>.json`` when the volume records a
    signature and is complete (alseg's outputs do so), so a rerun reads them back; else read afresh."""
    record = output_record(label_url) or {}
    sig = record.get("signature_sha256") if record.get("complete") else None
    boxes = np.asarray(boxes, dtype=np.int64)
    url = None
    if sig is not None:
        key = digest({"labels": sig, "boxes": boxes.tolist()})[:16]
        url = st.join(spec.run.dir, "selection", f"foreground-{key}.json")
        if st.exists(url):
            cached = st.read_json(url)
            if cached.get("labels_signature_sha256") == sig and len(cached.get("fractions", ())) == len(boxes):
                return np.asarray(cached["fractions"], dtype=np.float64), sig
    fractions = foreground_fractions(label_url, [Box(tuple(b[:3]), tuple(b[3:])) for b in boxes], level=0,
                                     missing_chunks="empty", progress=progress)
    if url is not None:
        st.write_json(url, {"labels": st.redact(label_url), "labels_signature_sha256": sig, "patches": len(boxes),
                            "fractions": fractions.tolist()})
    return fractions, sig


def _pseudolabels_of(spec: JobSpec, given: str | None) -> str | None:
    """The pseudo-label volume to describe picks by: the one given, else the run's own when it is
    complete and made from this job's input (the stage graph runs pseudo-labels before selection)."""
    if given is not None:
        return given
    url = pseudolabels_url(spec)
    record = output_record(url) or {}
    made_from = (record.get("signature") or {}).get("input") or {}
    mine = made_from.get("url") == st.redact(spec.input.url) and made_from.get("level") == spec.input.level
    return url if record.get("complete") and mine else None


def _diagnostics(spec: JobSpec, label_url: str, boxes: np.ndarray, picks: list[int], *, progress: bool) -> dict[str, Any]:
    fractions, sig = pool_foreground(spec, label_url, boxes, progress=progress)
    return {**selection_diagnostics(fractions, picks), "labels": st.redact(label_url), "labels_signature_sha256": sig}


def selection_signature(strategy: Any, store_sig: str | None, annotated: list[int], seed: int,
                        scores: dict[str, Any] | None) -> str:
    """What decides a round's picks; a field added to the strategy since, at its neutral value
    (:data:`alseg.spec.NEUTRAL_ADDITIONS`), leaves it as it was, so stored rounds stay current."""
    return digest({"strategy": without_neutral_additions(strategy.model_dump(mode="json"), "selection"),
                   "embeddings": store_sig, "annotated": annotated, "seed": seed,
                   "scores": None if scores is None else digest({k: np.asarray(v).tolist() for k, v in scores.items()})})


def run_select(spec: JobSpec, *, round_index: int = 1, scores: dict[str, Any] | None = None, progress: bool = True,
               picture: bool = True, pseudolabel_url: str | None = None, pretrained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 4c: pick this round's patches by the spec's strategy into ``<run dir>/selection/round-NN.json``
    (patch ids, their boxes, the method's details) and draw ``round-NN.png``. Reused when unchanged.

    With pseudo-labels (``pseudolabel_url``, else the run's own ``pseudolabels.zarr`` once complete)
    the record carries the picks' ``diagnostics`` against the pool (module docstring); a reused
    record whose diagnostics describe other pseudo-labels gets them anew, its picks unchanged."""
    from alseg.embed import EmbeddingStore
    from alseg.errors import SpecError
    from alseg.select import needs_embeddings, needs_pseudolabels, select_patches, uncertainty_measure

    claim(spec)
    strategy = spec.selection
    if not 1 <= round_index <= strategy.rounds:
        raise SpecError(f"selection round {round_index} outside 1..{strategy.rounds} (selection.rounds)")
    annotated = annotated_before(spec, round_index)
    emb = None
    store_sig = None
    boxes = None
    store_url = st.join(embedding_dir(spec), "embeddings.zarr")
    if needs_embeddings(strategy) or (picture and st.exists(st.join(store_url, "zarr.json"))):
        # diversity needs the store (made or reused here); others draw it only when it is already there
        store_url = run_embed(spec, progress=progress, pretrained=pretrained)["url"]
        store = EmbeddingStore.open(store_url)
        emb, boxes, store_sig = store.load(), store.boxes, store.meta["signature_sha256"]
    if uncertainty_measure(strategy) is not None and scores is None:
        scores = run_scores(spec, progress=progress)["scores"]
    if boxes is None:
        from alseg.preflight import patch_grid_of

        image = input_volume(spec)
        boxes = np.asarray([(*p.valid.start, *p.valid.stop) for p in patch_grid_of(spec, image.shape).patches()])
    n = len(boxes)
    labels = _pseudolabels_of(spec, pseudolabel_url)
    if needs_pseudolabels(strategy):
        if labels is None:
            raise SpecError(f"selection.method {strategy.method!r} weighs patches by their pseudo-label foreground: run the "
                            "pseudo-label stage first (alseg pseudolabel)")
        scores = {"foreground": pool_foreground(spec, labels, boxes, progress=progress)[0]}
    seed = spec.run.seed * 1000 + round_index
    signature = selection_signature(strategy, store_sig, annotated, seed, scores)
    url = selection_url(spec, round_index)
    if st.exists(url):
        prev = st.read_json(url)
        if prev.get("signature_sha256") == signature:
            if labels is not None:
                rec = output_record(labels) or {}
                current = rec.get("signature_sha256") if rec.get("complete") else None
                had = prev.get("diagnostics") or {}
                if current is None or had.get("labels_signature_sha256") != current:
                    prev["diagnostics"] = _diagnostics(spec, labels, boxes, prev["patch_ids"], progress=progress)
                    st.write_json(url, prev)
            return {**prev, "url": url, "reused": True}
    sel = select_patches(strategy, n=n, embeddings=emb, scores=scores, annotated=annotated, seed=seed, progress=progress)
    ids = [int(i) for i in sel.picks]
    record = {"round": round_index, "method": sel.method, "patch_ids": ids,
              "boxes": [[int(v) for v in boxes[i]] for i in ids], "annotated_before": annotated, "detail": sel.detail,
              "seed": seed, "signature_sha256": signature}
    if labels is not None:
        record["diagnostics"] = _diagnostics(spec, labels, boxes, ids, progress=progress)
    if picture and emb is not None:
        from alseg.embed.picture import draw, pca_2d, thumbnail

        image = input_volume(spec)
        thumbs = {i: thumbnail(image, Box(tuple(boxes[i][:3]), tuple(boxes[i][3:]))) for i in ids[:6]}
        png = st.join(spec.run.dir, "selection", f"round-{round_index:02d}.png")
        draw(pca_2d(emb, seed=spec.run.seed), ids, png, thumbs=thumbs, annotated=annotated,
             title=f"{spec.name}: round {round_index}, {sel.method}, {len(ids)} of {n} patches")
        record["picture"] = png
    st.write_json(url, record)
    return {**record, "url": url, "reused": False}
