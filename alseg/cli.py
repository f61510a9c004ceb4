"""The ``alseg`` command line. The only place that reads environment variables.

Every user-facing failure is an :class:`~alseg.errors.AlsegError`: it is printed as one clear
message (no traceback) and the command exits non-zero: 2 for an invalid spec or argument, 1 for
data, stores and outputs that already exist. Anything else is a bug: one line, exit 1, and the
traceback with ``ALSEG_DEBUG=1``.

Every message that leaves the command (errors, tracebacks, log lines) goes through one
redaction path (:func:`alseg.io.urls.scrub`): URLs lose user info and query strings, and the
values of the secret variables of the environment (AWS keys and tokens, fsspec keys) are masked,
whatever library wrote the text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from alseg.annotate.cli import add_import_parser
from alseg.errors import AlsegError, SpecError
from alseg.io.urls import scrub, secrets_from_environment
from alseg.jobcli import print_status, run_spec, spec_of
from alseg.pipeline.embedding import run_embed
from alseg.pipeline.evaluation import evaluate
from alseg.pipeline.predict import run_predict
from alseg.pipeline.pretrain import run_pretrain
from alseg.pipeline.pseudolabels import run_pseudolabels
from alseg.pipeline.selection import run_select
from alseg.plan.cli import add_plan_parsers
from alseg.report.model import selection_line
from alseg.submitcli import add_submit_parsers
from alseg.view.cli import add_view_parser

DEMO_DIR = "demo-run"
DEMO_SHAPE = (32, 256, 256)
DEMO_SPEC = """\
# alseg demo: the whole active-learning loop on a synthetic EM volume, sized for a 2-core CPU.
name: alseg-demo
input: {{url: {volume}, ground_truth: mitochondria}}
run: {{dir: {run}}}
patches:
  shape_vox: [16, 64, 64]          # the lower half (z) is the pool: 16 candidate patches
  holdout: {{kind: fraction, axis: z, fraction: 0.5, side: end}}
pseudolabel: {{method: classical, threshold: otsu, filter_pieces: true, link_gap: 1, block_shape_vox: [16, 256, 256], halo_px: 48,
              min_size_vox: 50}}  # touching mitochondria split before they are tested; one missed section bridged
nnunet:                            # 2d: 450 iterations cost about what 350-400 of the 3d net did, and learn more
  device: cpu
  configuration: 2d
  plan_overrides: {{patch_size_vox: [64, 64], batch_size: 16, n_stages: 4, features_per_stage: [16, 32, 64, 128]}}
  pretrain: {{epochs: 45, iterations_per_epoch: 10, val_iterations_per_epoch: 2, final_validation: false}}
  finetune: {{epochs: 10, iterations_per_epoch: 10, val_iterations_per_epoch: 2, learning_rate: 0.003, final_validation: false}}
embedding: {{epochs: 20, batch_size: 32, slices_per_patch: 4}}   # the conv MAE at 18 nm pixels (32 px inputs)
selection: {{method: kcenter, budget: 2, n_initial: 1, rounds: 2, foreground_min: 0.0}}  # among patches with pseudo-labels
annotation: {{method: simulated}}
prediction: {{block_shape_vox: [16, 128, 128], halo_vox: [0, 16, 16]}}  # a 2d network needs no section above or below
postprocess: {{block_shape_vox: [16, 128, 128], halo_vox: [4, 32, 32], min_size_vox: 200, watershed: distance,
              seed_distance_nm: 100}}  # split touching mitochondria
resources: {{backend: serial}}
"""
_SECRETS: list[str] = []  # secret values of this process's environment, masked in every message


def _say(text: str) -> None:
    """A message to stderr, redacted."""
    print(scrub(text, _SECRETS), file=sys.stderr)


class _Scrubbed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record), _SECRETS)


def _setup_logging() -> None:
    """alseg's log lines (and any library's that reach the root logger) on stderr, redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Scrubbed("alseg: %(message)s"))
    root = logging.getLogger()
    if not any(isinstance(h.formatter, _Scrubbed) for h in root.handlers):
        root.addHandler(handler)
    logging.getLogger("alseg").setLevel(logging.INFO)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _runner(args: argparse.Namespace):
    from alseg.runtime import make_runner

    backend = getattr(args, "backend", "serial")
    kwargs = {}
    if backend == "ray" and getattr(args, "address", None) is None and getattr(args, "num_cpus", None):
        kwargs["num_cpus"] = args.num_cpus
    return make_runner(backend, address=getattr(args, "address", None), progress=_progress(args), **kwargs)


# --------------------------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------------------------- #
def cmd_validate(args: argparse.Namespace) -> int:
    from alseg.spec import load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as err:
        _say(f"{args.spec}: invalid job spec ({len(err.problems)} problem(s)):")
        for path, msg in err.problems:
            _say(f"  {path}: {msg}")
        return 2
    if args.offline:
        print(f"{args.spec}: valid (spec {spec.digest()}; input not checked: --offline)")
        return 0
    from alseg.preflight import preflight

    report = preflight(spec)
    if not report.ok:
        _say(f"{args.spec}: the spec does not fit its input ({len(report.problems)} problem(s)):")
        for path, msg in report.problems:
            _say(f"  {path}: {msg}")
        return 2 if isinstance(report.error(), SpecError) else 1
    facts = ", ".join(f"{k}={v}" for k, v in report.facts.items())
    print(f"{args.spec}: valid (spec {spec.digest()}); input: {facts}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from alseg.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from alseg.io.omezarr import list_labels, open_volume

    vol = open_volume(args.url, level=args.level)
    print(vol.summary())
    names = list_labels(args.url)
    print(f"  labels           : {', '.join(names) if names else 'none'}")
    prov = vol.provenance()
    if prov:
        print(f"  made by          : {prov.get('generator', '?')}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from alseg.synth import SynthParams, write_synthetic

    params = SynthParams.preset(args.difficulty, shape=args.shape, voxel_size_nm=args.voxel_size, seed=args.seed)
    with _runner(args) as runner:
        summary = write_synthetic(args.out, params, chunks=args.chunks, overwrite=args.overwrite, progress=_progress(args), runner=runner)
    _print_summary("synthetic EM volume", summary)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """An image stack (and optionally its labels) as one OME-Zarr output, complete only with both."""
    from contextlib import ExitStack

    from alseg.ingest import ingest, open_source
    from alseg.io.omezarr import open_labels

    with ExitStack() as stack:
        source = open_source(args.source, dataset=args.dataset)
        stack.callback(source.close)
        labels = {}
        if args.labels:
            labels[args.labels_name] = open_source(args.labels, dataset=args.labels_dataset)
            stack.callback(labels[args.labels_name].close)
        vol = ingest(source, args.out, voxel_size_nm=args.voxel_size, chunks=args.chunks, overwrite=args.overwrite,
                     progress=_progress(args), labels=labels)
    print(vol.summary())
    if args.labels:
        lab = open_labels(args.out, args.labels_name)
        print(f"  labels '{args.labels_name}': {lab.shape} {lab.dtype}")
    return 0


def cmd_ingest_vnc(args: argparse.Namespace) -> int:
    from alseg.ingest import ingest_vnc

    summary = ingest_vnc(args.vnc_dir, args.out, overwrite=args.overwrite, progress=_progress(args), connectivity=args.connectivity)
    _print_summary("VNC ssTEM stack", summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on its embedded default: a synthetic EM volume as OME-Zarr, then its pseudo-labels, scored."""
    from alseg.io.omezarr import list_labels, open_volume
    from alseg.synth import SynthParams, ensure_synthetic

    out = Path(args.dir) / "synthetic.zarr"
    params = SynthParams.preset("medium", shape=DEMO_SHAPE, seed=args.seed)
    print(f"alseg demo: synthetic EM volume {params.shape} (z, y, x) at {params.voxel_size_nm} nm -> {out}")
    summary, reused = ensure_synthetic(out, params, overwrite=args.overwrite, progress=_progress(args))
    if reused:
        print("  (already there with the same parameters: reused; pass --overwrite to regenerate)")
    # read it back through ome-zarr's own reader, as a viewer would
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    logging.getLogger("ome_zarr").setLevel(logging.ERROR)  # it warns that a label has no parent: noise
    nodes = list(Reader(parse_url(str(out)))())
    levels = len(nodes[0].data)
    vol = open_volume(out)
    print(vol.summary())
    print(f"  pyramid levels   : {levels} (read back with ome-zarr's reader)")
    print(f"  labels           : {', '.join(list_labels(out))}")
    _print_summary("ground truth", {k: summary[k] for k in ("instances", "foreground_fraction")})

    # the whole loop on it: alseg run with the demo's spec (written beside the volume, rerunnable)
    spec_path = Path(args.dir) / "demo.yaml"
    text = DEMO_SPEC.format(volume=out.resolve(), run=(Path(args.dir) / "run").resolve())
    if not spec_path.exists() or spec_path.read_text() != text:
        spec_path.write_text(text)
    print(f"job spec -> {spec_path} (rerun: alseg run {spec_path}; progress: alseg status {Path(args.dir) / 'run'})")
    spec = _checked_spec(str(spec_path))
    return run_spec(spec, progress=_progress(args), echo=_training_echo(args))


def _print_scores(scores: dict) -> None:
    print(f"scores against the ground truth ({scores['objects_gt']} objects; {scores['objects_pred']} predicted):")
    print(f"  foreground IoU      : {scores['foreground_iou']:.4f}")
    for t, s in scores["at"].items():
        print(f"  at IoU {t:<5}       : F1 {s['f1']:.3f}  precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
              f"accuracy {s['accuracy']:.3f}  PQ {s['panoptic_quality']:.3f}")


def _checked_spec(path: str):
    """A job spec that is valid and fits its input (else a SpecError naming every problem)."""
    from alseg.preflight import preflight
    from alseg.spec import load_spec

    spec = load_spec(path)
    report = preflight(spec)
    if not report.ok:
        raise report.error()
    return spec


def cmd_pseudolabel(args: argparse.Namespace) -> int:
    """Pseudo-labels for a job spec's input, into its run directory; scored when it names ground truth."""

    spec = _checked_spec(args.spec)
    pl = run_pseudolabels(spec, progress=_progress(args))
    print(f"pseudo-labels ({pl['method']}) -> {pl['url']}" + ("  (reused: same signature)" if pl["reused"] else ""))
    _print_summary("pseudo-labels", {k: pl[k] for k in ("objects", "pieces_2d", "links")})
    if spec.input.ground_truth is not None:
        _print_scores(evaluate(spec, pl["url"]))
    return 0


def _training_echo(args: argparse.Namespace):
    """nnU-Net's progress lines (epochs, losses, pseudo Dice) while it trains; the full log is in the run directory."""
    if not _progress(args):
        return None
    keys = ("Epoch ", "train_loss", "val_loss", "Pseudo dice", "Epoch time", "Training done")

    def echo(line: str) -> None:
        if any(k in line for k in keys):
            print("  nnU-Net " + line.split(": ", 1)[-1], flush=True)

    return echo


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pseudo-labels (reused when unchanged), then nnU-Net plans itself on them and pretrains."""

    spec = _checked_spec(args.spec)
    res = run_pretrain(spec, progress=_progress(args), echo=_training_echo(args))
    print(f"pretrained nnU-Net -> {res['model_folder']}" + ("  (reused: same inputs)" if res["reused"] else ""))
    _print_summary("plans", {k: res[k] for k in ("cases", "patch_size", "batch_size", "features_per_stage")})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """The whole input through the pretrained nnU-Net, block by block, then 3D instances; scored on the held-out region."""

    spec = _checked_spec(args.spec)
    res = run_predict(spec, progress=_progress(args))
    print(f"prediction -> {res['classes']} (classes), {res['instances']} ({res['objects']} instances)")
    if spec.input.ground_truth is not None:
        held = spec.patches.holdout is not None
        print("on the held-out region:" if held else "on the whole volume:")
        _print_scores(evaluate(spec, res["instances"], holdout_only=held))
    return 0


def _print_embedding(info: dict) -> None:
    mae = info["mae"]
    reused = "  (reused: same inputs)" if mae["reused"] else ""
    if mae.get("eval_before") is not None:
        print(f"MAE -> {mae['checkpoint']}{reused}"
              + f"\n  reconstruction loss on fixed masked sections: {mae['eval_before']:.4f} -> {mae['eval_after']:.4f}")
        if mae.get("heldout_ratio") is not None:
            print(f"  held-out sections: loss {mae['heldout_loss']:.4f}, mean predictor {mae['heldout_mean_predictor']:.4f} "
                  f"(ratio {mae['heldout_ratio']:.3f}; 1.0 means it learned nothing)")
    elif mae.get("source", "mae") == "mae":
        print(f"MAE -> {mae['checkpoint']} (given by embedding.weights_path)")
    else:
        print(f"embedding model ({mae['source']}) -> {mae['checkpoint']}{reused}")
    print(f"embeddings -> {info['url']} ({info['rows']} patches x {info['dim']})" + ("  (reused: same signature)" if info["reused"] else ""))


def cmd_embed(args: argparse.Namespace) -> int:
    """Fit the embedding model of embedding.source on the candidate pool and embed every candidate patch."""

    spec = _checked_spec(args.spec)
    pretrained = None
    if spec.embedding.source == "nnunet":
        from alseg.pipeline.pretrain import run_pretrain

        pretrained = run_pretrain(spec, progress=_progress(args))
    _print_embedding(run_embed(spec, progress=_progress(args), pretrained=pretrained))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """Pick a round's patches for annotation by the spec's selection strategy."""

    spec = _checked_spec(args.spec)
    res = run_select(spec, round_index=args.round, progress=_progress(args))
    print(f"round {res['round']} ({res['method']}): patches {res['patch_ids']} -> {res['url']}"
          + ("  (reused: same inputs)" if res["reused"] else ""))
    if res.get("picture"):
        print(f"  picture: {res['picture']}")
    if res.get("diagnostics"):
        print(f"  {selection_line(res['diagnostics'])}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole job (or what is left of it): every stage whose inputs changed, in order."""
    return run_spec(_checked_spec(args.spec), progress=_progress(args), echo=_training_echo(args))


def cmd_experiment(args: argparse.Namespace) -> int:
    """A sweep over a base job spec: strategies x budgets x pretraining x seeds, baselines, tables."""
    from alseg.experiment import Piece, configurations, in_folder, load_experiment, run_experiment

    exp, base = load_experiment(args.experiment)
    if args.dir is not None:
        exp = in_folder(exp, args.dir)
    if args.serial:
        exp = exp.model_copy(update={"parallel": "serial"})
    named = (args.seeds, args.budgets, args.strategies, args.pretraining)
    piece = None if named == (None,) * 4 else Piece(
        seeds=None if args.seeds is None else tuple(args.seeds),
        budgets=None if args.budgets is None else tuple(b if b.endswith("%") else int(b) for b in args.budgets),
        strategies=None if args.strategies is None else tuple(args.strategies),
        pretraining=None if args.pretraining is None else tuple(p == "yes" for p in args.pretraining))
    if args.dry_run:
        for c in configurations(exp, base, piece):
            _say(f"{c.key}: {c.budget} patches, {'pretrained' if c.pretrained else 'from scratch'}, seed {c.seed}"
                 f"{', + pixel classifier' if c.forest else ''}")
        return 0
    run_experiment(exp, base, say=_say, progress=_progress(args), piece=piece)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Each stage and round of a job: done, stale (and why) or pending, with wall times."""
    return print_status(spec_of(args.target))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Instance metrics of a label volume against ground truth, block by block."""
    from alseg.evaluate.metrics import evaluate_volumes

    scores = evaluate_volumes(args.ground_truth, args.labels, thresholds=tuple(args.iou))
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        _print_scores(scores)
    return 0


def _print_summary(title: str, summary: dict) -> None:
    print(f"{title}:")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        print(f"  {key:<20}: {value}")


# --------------------------------------------------------------------------------------------- #
# parser
# --------------------------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alseg",
        description="Active-learning segmentation of large 3D EM volumes (OME-Zarr in, OME-Zarr labels out).",
        epilog="Storage credentials come from the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, FSSPEC_*), never from specs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        p.set_defaults(func=fn)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    p = add("validate", cmd_validate, "check a YAML job spec (every error with its field path)",
            "Validate a job spec: its fields (unknown fields, types, ranges, consistency), then, unless "
            "--offline, the input it names (reachable, OME-Zarr, ground truth present, budget within the "
            "candidate pool). Exits 2 on any problem.")
    p.add_argument("spec", help="path of the YAML job spec")
    p.add_argument("--offline", action="store_true", help="check the spec only, do not open its input")

    add("schema", cmd_schema, "print the JSON schema of job specs",
        "Print the JSON schema of the job spec: every section and field with its type, default, bounds and "
        "description. Editors use it to complete and check YAML specs (e.g. yaml-language-server).")

    p = add("info", cmd_info, "print the summary of an OME-Zarr image (shape, chunks, voxel size, labels)",
            "Open an OME-Zarr image lazily (metadata only) at a local path or URL and print its shape, dtype, "
            "chunks, physical voxel size and extent, pyramid levels and label images.")
    p.add_argument("url", help="OME-Zarr image: local path, s3://, gs://, http(s)://")
    p.add_argument("--level", type=int, default=0, help="multiscale level (default 0)")

    def add_output(p: argparse.ArgumentParser) -> None:
        p.add_argument("--chunks", nargs=3, type=int, metavar=("Z", "Y", "X"), default=(32, 256, 256), help="chunk shape (default 32 256 256)")
        p.add_argument("--overwrite", action="store_true", help="replace an output that already holds data")

    def add_backend(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", choices=("serial", "ray"), default="serial", help="where blocks run (default serial)")
        p.add_argument("--address", default=None, help="existing Ray cluster address (default: start a local one on 127.0.0.1)")
        p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray cluster")

    p = add("synth", cmd_synth, "write a seeded synthetic EM volume with ground-truth mitochondria",
            "Generate an EM-like volume (mitochondria with double membrane and cristae, cell membranes, "
            "vesicles, dense bodies, blur, noise, slice drift) block by block, any size, as OME-Zarr with "
            "ground-truth instances in labels/mitochondria.")
    p.add_argument("out", help="output OME-Zarr (local path or URL)")
    p.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), default=(64, 512, 512))
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), default=(30.0, 8.0, 8.0), help="nm (default MitoEM's 30 8 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", choices=("easy", "medium", "hard"), default="medium")
    add_output(p)
    add_backend(p)

    p = add("ingest", cmd_ingest, "convert a TIFF/PNG/HDF5/.npy stack to OME-Zarr",
            "Convert a multi-page TIFF, a folder of TIFF or PNG slices, an HDF5 dataset (file.h5:/path) or "
            "a .npy array into OME-Zarr, slab by slab (bounded memory), with a pyramid.")
    p.add_argument("source", help="input stack (file or folder of slices)")
    p.add_argument("out", help="output OME-Zarr (local path or URL)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), required=True, help="voxel size in nm")
    p.add_argument("--dataset", default=None, help="HDF5 dataset (or give file.h5:/dataset)")
    p.add_argument("--labels", default=None, help="a label stack of the same shape to store as labels/NAME")
    p.add_argument("--labels-name", default="labels", help="name of the label image (default 'labels')")
    p.add_argument("--labels-dataset", default=None, help="HDF5 dataset of the labels")
    add_output(p)

    p = add("ingest-vnc", cmd_ingest_vnc, "convert the Drosophila VNC ssTEM stack (raw + mitochondria) to OME-Zarr",
            "Convert the Drosophila VNC ssTEM stack (20 x 1024 x 1024 at 50 x 4.6 x 4.6 nm) into OME-Zarr with "
            "ground-truth mitochondria instances (labels == 191, 3D connected components) in labels/mitochondria.")
    p.add_argument("vnc_dir", help="folder with raw/ and labels/ (e.g. ../shared/data/vnc)")
    p.add_argument("out", help="output OME-Zarr")
    p.add_argument("--connectivity", type=int, choices=(6, 26), default=26, help="3D connectivity of instances")
    p.add_argument("--overwrite", action="store_true", help="replace an output that already holds data")

    stage_commands = (
        ("pseudolabel", cmd_pseudolabel, "make the pseudo-labels of a job spec's input (stage 2)",
         "Run the spec's pseudo-labeller (classical, sam, cellsam or microsam) over the whole input volume, block by "
         "block, link 2D instances into 3D and write <run dir>/pseudolabels.zarr; a rerun with an unchanged "
         "signature reuses them. Scores them when the spec names ground truth."),
        ("pretrain", cmd_pretrain, "pseudo-labels, then nnU-Net self-configures and pretrains on them (stage 3)",
         "Make (or reuse) the spec's pseudo-labels, export every candidate patch with them as an nnU-Net "
         "dataset in the run directory, let nnU-Net plan (with the spec's plan_overrides) and preprocess, and "
         "pretrain with the spec's nnunet.pretrain schedule. Logs and checkpoints stay in <run dir>/nnunet."),
        ("predict", cmd_predict, "predict the whole volume with the trained nnU-Net, then 3D instances (stage 7)",
         "Run the pretrained nnU-Net over the whole input block by block (prediction.block_shape_vox, halo_vox), "
         "write <run dir>/prediction/classes.zarr, the mitochondria mask and the stitched 3D instances "
         "(postprocess section: connectivity, min_size_vox, watershed), and score them on the held-out region."),
    )
    for name, fn, help_text, description in stage_commands:
        add(name, fn, help_text, description).add_argument("spec", help="path of the YAML job spec")
    add("embed", cmd_embed, "train the MAE and embed every candidate patch (stage 4)",
        "Train the masked autoencoder (embedding section: timm backbone, mask ratio, epochs) on sections of the "
        "candidate pool, or load embedding.weights_path, then embed every candidate patch (mean of "
        "slices_per_patch section embeddings, L2-normalised) into <run dir>/embedding/embeddings.zarr. "
        "Reused when unchanged; an interrupted training or embedding resumes.").add_argument("spec", help="path of the YAML job spec")
    p = add("select", cmd_select, "pick a round's patches for annotation (stage 4)",
            "Select selection.budget candidate patches by the spec's strategy (kcenter, kmeans, random; entropy, "
            "least_confidence, bald and hybrid score the pool with the pretrained nnU-Net), never one annotated in an earlier "
            "round, into <run dir>/selection/round-NN.json with a picture of the embedding store (round-NN.png).")
    p.add_argument("spec", help="path of the YAML job spec")
    p.add_argument("--round", type=int, default=1, help="active-learning round (earlier rounds must exist; default 1)")

    p = add("run", cmd_run, "run the whole job: pseudo-labels, pretraining, MAE, rounds of selection, annotation and "
            "fine-tuning, prediction, evaluation",
            "Run every stage of the job in order, or resume it: a stage whose spec fields and upstream artefacts are "
            "unchanged is reused, a changed field re-runs exactly the stages downstream of it. Round 0 evaluates the "
            "pretrained model alone; each of selection.rounds rounds selects patches from those not yet annotated, has "
            "them annotated (simulated: ground truth; manual: exported for napari / micro-SAM, then the job stops until "
            "'alseg import'), fine-tunes nnU-Net on everything annotated so far and scores it on the held-out region; "
            "the final model predicts the whole volume. Prints the round table.")
    p.add_argument("spec", help="path of the YAML job spec")
    p = add("experiment", cmd_experiment, "sweep strategies x budgets x pretraining x seeds over a base job; tables",
            "Run (or resume) a sweep over a base job spec: every strategy at every budget (patch counts or % of the "
            "candidate pool), with and without pseudo-label pretraining, for every seed, as one-round jobs with "
            "simulated annotation; pseudo-labels, pretraining and embeddings run once per seed and are shared. Adds "
            "the baselines (full annotation, pseudo-labels alone, the pretrained model alone, a pixel classifier on "
            "the same picks, the ground truth through the same post-processing) and writes CSV and Markdown tables "
            "and learning curves under <dir>/tables. A rerun computes only configurations that are new or changed.")
    p.add_argument("experiment", help="path of the YAML experiment spec (base, dir, strategies, budgets, ...)")
    p.add_argument("--serial", action="store_true", help="run configurations one after another, whatever parallel says")
    p.add_argument("--dry-run", action="store_true", help="list the configurations and stop")
    piece = p.add_argument_group("a piece of the sweep", "run part of it (the whole sweep's configurations that match, "
                                 "with the same folders and results: pieces add up, and the tables a piece writes cover "
                                 "every stored result; a long sweep can run in pieces on different days or machines). "
                                 "Full annotation belongs to every piece of its seed; --strategies full runs it alone")
    piece.add_argument("--dir", default=None, help="experiment folder instead of the spec's dir (relative to here)")
    piece.add_argument("--seeds", nargs="+", type=int, default=None, metavar="S", help="these seeds only")
    piece.add_argument("--budgets", nargs="+", default=None, metavar="B", help="these budgets only (counts, or '10%%')")
    piece.add_argument("--strategies", nargs="+", default=None, metavar="NAME",
                       help="these strategies only, by their table names (e.g. kcenter-mae random; full)")
    piece.add_argument("--pretraining", nargs="+", choices=("yes", "no"), default=None,
                       help="with pretraining (yes), from scratch (no), or both")
    p = add("status", cmd_status, "say which stages and rounds of a job are done, stale or pending",
            "For a run directory (its recorded spec) or a spec file (what would re-run under it): each stage, "
            "done / stale (with the fields or upstream stages that changed) / pending, its wall time, and the "
            "round table so far.")
    p.add_argument("target", help="run directory or YAML job spec")
    add_import_parser(sub)
    add_plan_parsers(sub)
    add_submit_parsers(sub)
    add_view_parser(sub)

    p = add("evaluate", cmd_evaluate, "score a label volume against ground truth (F1, precision, recall, PQ, IoU)",
            "Instance matching at IoU thresholds (one-to-one, optimal), with F1, precision, recall, accuracy, "
            "panoptic quality and foreground IoU, computed block by block.")
    p.add_argument("ground_truth", help="ground-truth label image (OME-Zarr URL)")
    p.add_argument("labels", help="label image to score (OME-Zarr URL)")
    p.add_argument("--iou", nargs="+", type=float, default=[0.5, 0.75], help="IoU thresholds (default 0.5 0.75)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")

    p = add("demo", cmd_demo, "run the demo on the embedded default (a synthetic EM volume)",
            "The main job on an embedded default: writes a synthetic EM volume with ground truth as "
            "OME-Zarr under DIR, reads it back with ome-zarr's reader and prints it. Rerunning reuses it.")
    p.add_argument("--dir", default=DEMO_DIR, help=f"demo folder (default ./{DEMO_DIR})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="regenerate even if present")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _SECRETS[:] = secrets_from_environment(dict(os.environ))
    _setup_logging()
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
    except KeyboardInterrupt:
        _say("interrupted")
        code = 130
    except Exception as err:  # noqa: BLE001 - every failure leaves as one redacted message
        _failed(err)
        code = 2 if isinstance(err, SpecError) else 1
    if code:
        _quiet_exit()
    return code


def _failed(err: BaseException) -> None:
    """Print a failure as one line (a bug: also the traceback with ALSEG_DEBUG=1)."""
    if os.environ.get("ALSEG_DEBUG"):
        _say("".join(traceback.format_exception(err)).rstrip())
    if isinstance(err, AlsegError):
        _say(f"error: {err}")
    else:
        _say(f"error: internal error ({type(err).__name__}: {err}); please report it with the output of ALSEG_DEBUG=1")


def _quiet_exit() -> None:
    """After a failure, keep the exit quiet: a store that did not answer leaves client coroutines
    that complain at shutdown, after the message that already said what happened."""
    sys.unraisablehook = lambda _: None
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    import warnings

    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
