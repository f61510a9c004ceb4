"""``alseg import RUNDIR FOLDER [--replace] [--partial]``: store people's labels in a run.

The job is the one that owns the run directory: its spec is rebuilt from the ``spec`` field of
``<RUNDIR>/alseg-run.json`` (resources at their defaults: importing runs nothing). A run directory
named differently from how its spec names it (a relative ``run.dir`` used from another working
directory) is the one given here. Failures are alseg errors, printed as one line by ``alseg``'s
main (exit 1 for data and existing outputs, 2 for a spec that no longer validates).
"""

from __future__ import annotations

import argparse
from typing import Any

from alseg.annotate.importer import import_round
from alseg.annotate.layout import ids_text
from alseg.errors import DataError
from alseg.io import store as st
from alseg.rundir import RECORD, contains
from alseg.spec import JobSpec, parse_spec


def spec_of_run(rundir: str) -> JobSpec:
    """The job spec that owns ``rundir``, from its ``alseg-run.json``."""
    url = st.join(rundir, RECORD)
    if not st.exists(url):
        raise DataError(f"{st.redact(rundir)}: not an alseg run directory ({RECORD} is missing)")
    record = st.read_json(url)
    data = record.get("spec") if isinstance(record, dict) else None
    if not isinstance(data, dict):
        raise DataError(f"{st.redact(url)}: holds no job spec (expected a 'spec' mapping)")
    spec = parse_spec(data, source=st.redact(url))
    if not (contains(spec.run.dir, rundir) and contains(rundir, spec.run.dir)):
        spec = spec.model_copy(update={"run": spec.run.model_copy(update={"dir": rundir})})
    return spec


def cmd_import(rundir: str, folder: str, replace: bool = False, partial: bool = False) -> int:
    """Import the edited labels of the package ``folder`` into the run ``rundir``; prints what was
    stored and what comes next; returns the exit code (0)."""
    spec = spec_of_run(rundir)
    result = import_round(spec, folder, replace=replace, partial=partial)
    print(_summary(result, rundir))
    return 0


def _summary(result: dict[str, Any], rundir: str) -> str:
    lines = [f"round {result['round']}: {len(result['imported'])} patch(es) stored in {st.redact(result['url'])}"
             + (f" ({ids_text(result['imported'])})" if result["imported"] else "")]
    if result["replaced"]:
        lines.append(f"  replaced earlier imports of patch(es) {ids_text(result['replaced'])}")
    if result["unchanged"]:
        lines.append(f"  unchanged (stored before with the same labels): {ids_text(result['unchanged'])}")
    if result["missing"]:
        lines.append(f"  still to annotate: patch(es) {ids_text(result['missing'])}; when they are done: "
                     f"alseg import {st.redact(rundir)} {st.redact(result['folder'])} --partial")
    else:
        lines.append("  next: alseg run SPEC (this job's spec file): it continues with fine-tuning")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    return cmd_import(args.rundir, args.folder, replace=args.replace, partial=args.partial)


def add_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``import`` command to ``alseg``'s sub-command parsers (``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "import", help="store the labels people edited in an annotation package (after `alseg run` stopped for them)",
        description="Read the edited labels of an annotation package (<run dir>/annotation/round-NN, written when "
        "`alseg run` stops for manual annotation) back into the run: micro-SAM's output folder edited/patch-<id>.tif "
        "first, else labels/annotation in the patch's OME-Zarr package. Every patch is checked before any is "
        "stored: its shape, integer ids >= 0, no unknown or missing patch, a package of the run's current round. "
        "Then `alseg run SPEC` continues with fine-tuning.")
    p.set_defaults(func=_run)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("rundir", help="the job's run directory (holds alseg-run.json)")
    p.add_argument("folder", help="the annotation package (e.g. RUNDIR/annotation/round-01)")
    p.add_argument("--replace", action="store_true", help="replace patches imported before with other labels")
    p.add_argument("--partial", action="store_true", help="store the patches that have labels; the rest stay to do")
    return p
