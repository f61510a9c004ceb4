"""``alseg calibrate SPEC`` and ``alseg plan SPEC --nodes N --gpus-per-node G``: the command-line side.

``plan`` reads no voxel: the volume's shape comes from ``--shape`` or from the image's metadata
(zarr.json / .zattrs and the array's metadata, as ``alseg info`` reads them). It loads neither
torch nor nnU-Net: :mod:`alseg.plan.calibrate`, which runs the stages, is imported by
``calibrate`` alone.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from alseg.errors import AlsegError, SpecError
from alseg.io import store as st
from alseg.io.omezarr import open_volume
from alseg.plan.job import Cluster, default_cpus_per_node
from alseg.plan.model import project, render
from alseg.plan.profile import Profile, default_path, default_profile, load_profile, save_profile
from alseg.spec import JobSpec, load_spec


def volume_facts(spec: JobSpec, shape: list[int] | None, voxel_size_nm: list[float] | None,
                 dtype_bytes: int | None) -> tuple[tuple[int, int, int], int, tuple[float, ...] | None, list[str]]:
    """Shape, bytes per voxel and voxel size of the spec's input, and where each came from: the
    options, else the OME-Zarr metadata (no chunk is read) unless ``--shape`` is given (then the
    input is not opened: 1 byte per voxel, and the voxel size None, for the profile's)."""
    voxel = tuple(float(v) for v in voxel_size_nm) if voxel_size_nm else None
    said = [] if voxel is None else [f"voxel size {' x '.join(f'{v:g}' for v in voxel)} nm from --voxel-size"]
    if shape is not None:
        said.insert(0, "volume shape from --shape (input not opened)")
        said.insert(1, f"{dtype_bytes} byte(s) per voxel from --dtype-bytes" if dtype_bytes else
                    "1 byte per voxel assumed (--dtype-bytes)")
        return tuple(shape), dtype_bytes or 1, voxel, said  # type: ignore[return-value]
    try:
        vol = open_volume(spec.input.url, level=spec.input.level)
    except AlsegError as err:
        raise SpecError(f"cannot learn the volume's shape from input.url {st.redact(spec.input.url)} ({err}): "
                        "give it as --shape Z Y X") from err
    said.insert(0, f"volume shape from the input's OME-Zarr metadata (level {spec.input.level}; no voxel read)")
    said.insert(1, f"{dtype_bytes} byte(s) per voxel from --dtype-bytes" if dtype_bytes else
                f"{vol.dtype.itemsize} byte(s) per voxel: the input's dtype ({vol.dtype})")
    if voxel is None:
        voxel = tuple(float(v) for v in vol.voxel_size_nm)
        said.append(f"voxel size {' x '.join(f'{v:g}' for v in voxel)} nm from the input's metadata")
    return vol.shape, dtype_bytes or vol.dtype.itemsize, voxel, said


def cmd_plan(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    spec = load_spec(args.spec)
    profile: Profile = load_profile(args.profile) if args.profile else default_profile()
    shape, dtype_bytes, voxel, sources = volume_facts(spec, args.shape, args.voxel_size, args.dtype_bytes)
    if args.cpus_per_node:
        cpus, line = args.cpus_per_node, f"{args.cpus_per_node} CPUs per node from --cpus-per-node"
    else:
        cpus, line = default_cpus_per_node(spec, args.gpus_per_node, profile.device.cpu_count)
    plan = project(spec, shape, Cluster(args.nodes, args.gpus_per_node, cpus), profile, dtype_bytes=dtype_bytes,
                   voxel_size_nm=voxel, sources=[*sources, line])
    if args.json:
        out: dict[str, Any] = plan.to_json()
        out["seconds_to_plan"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(out, indent=1))
    else:
        print(render(plan))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    # here, not at the top: calibrating runs the stages (torch, nnU-Net); `alseg plan` must not load them
    from alseg.plan.calibrate import calibrate

    spec = load_spec(args.spec)
    profile = calibrate(spec, quick=args.quick, shape=args.shape, work_dir=args.work, store_url=args.store,
                        keep=args.keep, progress=not args.quiet, say=print)
    path = save_profile(profile, args.out or default_path(profile))
    r = profile.rates
    print(f"profile of {profile.describe()} -> {path} ({profile.seconds:.0f} s)")
    print(f"  pseudo-labels ({r.pseudolabel.method}): {r.pseudolabel.slices_per_s:.2f} tile sections/s, "
          f"{r.pseudolabel.read_voxels_per_s / 1e6:.2f} M read voxels/s per worker")
    print(f"  nnU-Net training: {r.nnunet.s_per_iteration:.3f} s per iteration (batch {r.nnunet.batch_size}, "
          f"patch {r.nnunet.patch_vox}) on {r.nnunet.device}")
    print(f"  prediction: {r.predict.tiles_per_s:.2f} tiles/s = {r.predict.tile_voxels_per_s / 1e6:.2f} M tile voxels/s per "
          f"worker on {r.predict.device} (mirroring {r.predict.mirroring})")
    if r.mae is not None:
        print(f"  MAE: {r.mae.steps_per_s:.2f} steps/s (batch {r.mae.batch_size}, {r.mae.img_size_px} px)")
    print(f"  embeddings: {r.embed.patches_per_s:.1f} patches/s; stitching {r.postprocess.stitch_voxels_per_s / 1e6:.2f} M voxels/s")
    print(f"  store ({r.store.url}): read {r.store.read_mb_per_s:.0f} MB/s, write {r.store.write_mb_per_s:.0f} MB/s")
    return 0


def add_plan_parsers(subparsers: Any) -> None:
    """Add ``calibrate`` and ``plan`` to ``alseg``'s sub-command parsers."""
    p = subparsers.add_parser(
        "calibrate", help="measure this node's throughput per stage at a spec's settings; store it as a JSON profile",
        description="Measure, on a small synthetic volume at the spec's settings and with alseg's own stage code, this "
        "node's throughput per worker: pseudo-labels, nnU-Net's dataset preparation and training at the spec's plan, "
        "prediction (a model of the planned architecture trained a few iterations), the post-processing and stitching, "
        "the MAE and the embeddings, scoring, and the store's read and write rates. Writes a profile for `alseg plan`.")
    p.set_defaults(func=cmd_calibrate)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("spec", help="path of the YAML job spec (its settings are measured; its input is not read)")
    p.add_argument("--out", default=None, help="profile file (default profiles/<device name>.json)")
    p.add_argument("--quick", action="store_true", help="the smallest volume and fewest steps that measure each stage (a "
                   "test, or a first look): noisier figures")
    p.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), default=None,
                   help="calibration volume (default: two candidate patches along z and x, at least one nnU-Net patch)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    p.add_argument("--store", default=None, help="where to measure storage read/write rates (e.g. an s3:// prefix of the "
                   "bucket the job will use; default: the scratch folder); only what calibrate writes there is removed")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")

    p = subparsers.add_parser(
        "plan", help="project a job's work, bytes, memory and wall time per stage on a cluster, reading no voxel",
        description="Count the job's candidate patches, blocks, tiles and tasks per stage from the spec and the volume's "
        "shape (--shape, or the input's metadata), and project bytes read and written, peak memory per worker and wall "
        "time per stage on NODES x GPUS, at a profile's per-worker rates (alseg calibrate); prints the scaling "
        "assumptions it used. Without --profile the built-in default profile is used, labelled as an assumption.")
    p.set_defaults(func=cmd_plan)
    p.add_argument("-q", "--quiet", action="store_true", help="(no effect; for symmetry)")
    p.add_argument("spec", help="path of the YAML job spec")
    p.add_argument("--nodes", type=int, required=True, help="nodes of the cluster")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node (0: CPU nodes)")
    p.add_argument("--cpus-per-node", type=int, default=None,
                   help="CPUs per node (default: with GPUs, what they need: the largest CPUs-per-GPU ratio of the spec's "
                   "GPU stages x --gpus-per-node; on CPU nodes, the profile's node's count; the plan says which)")
    p.add_argument("--profile", default=None, help="profile from alseg calibrate (default: the built-in assumption)")
    p.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), default=None,
                   help="the volume's shape (default: read from the input's OME-Zarr metadata)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), default=None,
                   help="voxel size in nm (default: the input's metadata; with --shape, the input is not opened and "
                   "the profile's calibration volume's is used; the plan's sources say which)")
    p.add_argument("--dtype-bytes", type=int, default=None, help="bytes per input voxel (default: the input's dtype, else 1)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
