"""A benchmark's working folder: it removes only what an earlier run of the same script wrote.

``claim(work, owner, outputs, inputs)`` runs every check before anything is removed:

* an input (a spec, a profile) inside ``work`` is refused: a rerun would remove it;
* a non-empty ``work`` without ``owner``'s marker file is refused: the script did not write it;
* an entry of ``work`` that none of the ``outputs`` patterns (``fnmatch``) names is refused: the
  script wrote the folder, someone added to it;

then the outputs of the earlier run are removed and the marker is written (last: a folder holding
it holds only this script's outputs).
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
from pathlib import Path


def claim(work: Path, owner: str, outputs: list[str], inputs: list[Path]) -> None:
    marker = work / f".alseg-{owner}"
    for path in inputs:
        if path.resolve().is_relative_to(work):
            sys.exit(f"{path} lies inside --dir {work}, which a run of this script clears: move it or give another --dir")
    entries = sorted(work.iterdir()) if work.is_dir() else []
    if entries and not marker.exists():
        sys.exit(f"{work} holds files this script did not write: give another --dir")
    foreign = [e.name for e in entries if e != marker and not any(fnmatch.fnmatch(e.name, p) for p in outputs)]
    if foreign:
        sys.exit(f"{work} holds {', '.join(foreign[:5])}, which this script does not write: move it or give another --dir")
    for entry in entries:
        if entry != marker:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"written by benchmarks/{owner.replace('-', '_')}.py\n")
