"""Stage 6: nnU-Net fine-tuned on every patch annotated so far, one model folder per round.

Round ``r`` is the nnU-Net dataset ``Dataset<100 + r>_round<rr>``: the annotated patches of
rounds ``1..r`` as cases, labels from the run's annotation store. From the pretrained model
(``nnunet.finetune_from: pretrained``, the default) the dataset is preprocessed with the
pretraining's plans and the network starts from its weights (nnU-Net's pretrained-weights
route); from scratch, nnU-Net plans itself on the annotated cases. Each round's model lives in
its own folder; a later round never touches an earlier one's.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from alseg.errors import DataError, SpecError
from alseg.geometry import Box
from alseg.nnunet import IntensityNorm, NnUNetDirs, export_dataset, plan_and_preprocess, train, transfer_plans
from alseg.nnunet.models import CHECKPOINT, local_model
from alseg.nnunet.paths import PLANS, dataset_name
from alseg.pipeline.common import fresh_dataset, input_norm, nnunet_dirs
from alseg.rundir import claim
from alseg.spec import JobSpec

PRETRAIN_DATASET = 1


def round_dataset(round_index: int) -> tuple[int, str]:
    """nnU-Net dataset id and name of a fine-tuning round."""
    if not 1 <= round_index <= 899:
        raise SpecError(f"fine-tuning round {round_index} outside 1..899 (nnU-Net dataset ids)")
    return 100 + round_index, f"round{round_index:02d}"


def _restore_pretraining_plans(dirs: NnUNetDirs, model: str) -> None:
    """The pretraining's plans and fingerprint where carrying plans looks for them, from the
    pretrained model folder (``model``, local). A local run directory holds them already; on
    object storage this node's scratch may lack them (another node pretrained) or hold an earlier
    pretraining's, so they are always taken from the model."""
    import shutil

    target = os.path.join(dirs.preprocessed, dataset_name(PRETRAIN_DATASET, "pseudo"))
    if dirs.url is None and os.path.isfile(os.path.join(target, PLANS + ".json")):
        return
    os.makedirs(target, exist_ok=True)
    shutil.copy(os.path.join(model, "dataset_fingerprint.json"), os.path.join(target, "dataset_fingerprint.json"))
    shutil.copy(os.path.join(model, "plans.json"), os.path.join(target, PLANS + ".json"))


def run_finetune(spec: JobSpec, round_index: int, patches: list[tuple[int, Box]], labels_url: str, *,
                 pretrained: dict[str, Any] | None, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune (or train from scratch, ``pretrained=None``) on the annotated ``patches``
    (``(patch id, box)``, labels in ``labels_url``); returns the model folder, its intensity
    normalisation and the cases it saw."""
    claim(spec)
    if not patches:
        raise SpecError(f"round {round_index}: no annotated patches to fine-tune on")
    n = spec.nnunet
    dirs = nnunet_dirs(spec).make()
    dataset, name = round_dataset(round_index)
    fresh_dataset(dirs, dataset, name)
    norm = IntensityNorm(**pretrained["norm"]) if pretrained is not None else input_norm(spec)
    boxes = [box for _, box in patches]
    exported = export_dataset(dirs, dataset, name, spec.input.url, labels_url, boxes, norm=norm, boundary=n.boundary_class,
                              level=spec.input.level, missing_chunks=spec.input.missing_chunks)
    if pretrained is None and exported["foreground_voxels"] == 0:
        raise DataError(f"round {round_index}: the {len(boxes)} annotated patch(es) hold no mitochondria, and nnU-Net cannot "
                        "plan itself on them (nnunet.finetune_from: scratch); annotate more rounds, or fine-tune from "
                        "the pretrained model")
    checkpoint = None
    if pretrained is not None:
        source = local_model(pretrained["model_folder"])
        _restore_pretraining_plans(dirs, source)
        transfer_plans(dirs, PRETRAIN_DATASET, dataset, configuration=n.configuration, echo=echo)
        checkpoint = os.path.join(source, "fold_all", CHECKPOINT)
    else:
        plan_and_preprocess(dirs, dataset, configuration=n.configuration, overrides=n.plan_overrides.model_dump(), echo=echo)
    folder = train(dirs, dataset, name, n.finetune, configuration=n.configuration, device=n.device, pretrained=checkpoint,
                   echo=echo)
    return {"model_folder": folder, "norm": norm.to_json(), "cases": len(boxes), "patch_ids": [int(i) for i, _ in patches],
            "boxes": [[*b.start, *b.stop] for b in boxes], "from": "pretrained" if pretrained is not None else "scratch"}
