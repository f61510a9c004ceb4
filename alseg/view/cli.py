"""``alseg view RUNDIR [--round N] [--port P] [--state-only] [--screenshot PNG]``: a run in neuroglancer.

Starts the file server and neuroglancer's own server on 127.0.0.1 and prints one URL to open;
runs until interrupted (Ctrl-C, SIGTERM). ``--state-only`` writes the viewer state into the run
directory and starts nothing. ``--screenshot PNG`` opens the viewer in a headless Chromium of its
own, saves what it rendered, and stops everything it started (by process id).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from alseg.errors import DependencyError, OutputExistsError
from alseg.io import store as st
from alseg.view.contents import run_contents
from alseg.view.session import ViewSession, write_state

DEFAULT_FILES_PORT = 8091
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage", "--window-size=1024,768")
"""Headless Chromium that renders WebGL2 in software (SwiftShader): what a machine without a GPU needs."""


def browser() -> str:
    """A Chromium-family browser on PATH (:class:`DependencyError` naming them when there is none)."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise DependencyError(f"--screenshot needs a Chromium on PATH ({', '.join(BROWSERS)}): e.g. apt-get install chromium")


def open_headless(url: str, profile: str) -> subprocess.Popen:
    """A headless Chromium showing ``url`` (its own profile folder), in a process group of its own."""
    return subprocess.Popen([browser(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_browser(proc: subprocess.Popen) -> None:
    """Stop a browser of :func:`open_headless` and every process it started (its group, by id)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the finally blocks stop the browser and the servers


def cmd_view(args: argparse.Namespace) -> int:
    if args.screenshot and os.path.exists(args.screenshot):
        raise OutputExistsError(f"{args.screenshot} exists: alseg view --screenshot writes a new file only")
    contents = run_contents(args.rundir, args.round)
    for line in contents.missing:
        print(f"not in this run yet: {line}", file=sys.stderr)
    if args.state_only:
        out = write_state(contents, args.files_port or DEFAULT_FILES_PORT)
        print(f"viewer state: {st.redact(out['state'])}")
        if "link" in out:
            print(out["link"])
        else:
            print(f"its volumes are served by: alseg view {st.redact(args.rundir)} --files-port "
                  f"{args.files_port or DEFAULT_FILES_PORT}")
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    session = ViewSession(contents, port=args.port, files_port=args.files_port).start()
    try:
        if args.screenshot:
            return _screenshot(session, args.screenshot)
        print(session.url, flush=True)
        _wait_for_interrupt()
        return 0
    finally:
        session.close()


def _screenshot(session: ViewSession, path: str) -> int:
    with tempfile.TemporaryDirectory(prefix="alseg-view-browser-") as profile:
        proc = open_headless(session.url, profile)
        try:
            assert session.viewer is not None
            png = session.viewer.screenshot(size=(1024, 768))
        finally:
            stop_browser(proc)
    with open(path, "xb") as fh:  # never over a file that appeared meanwhile
        fh.write(png)
    print(f"screenshot: {path}")
    return 0


def _wait_for_interrupt() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (see _interrupt): a normal end
        pass


def add_view_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "view", help="look at a run in the browser (neuroglancer): the volume, labels, core-sets, measurements",
        description="Serve a run directory (local or object storage) to neuroglancer on 127.0.0.1 and print the URL to "
        "open: the raw image (contrast from its statistics), the pseudo-labels, the predicted instances (the final "
        "prediction, or --round N's) with their measurements on selection, the ground truth, the held-out region and "
        "every round's core-set patches as boxes. Private buckets are read with this environment's credentials, which "
        "never enter a URL. Runs until Ctrl-C. What the run does not hold yet is listed and left out.")
    p.set_defaults(func=cmd_view)
    p.add_argument("rundir", help="the job's run directory (holds alseg-run.json)")
    p.add_argument("--round", type=int, default=None, help="show this round's predicted instances (0: the pretrained model's)")
    p.add_argument("--port", type=int, default=0, help="the viewer's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--files-port", type=int, default=0,
                   help=f"the volumes' file server's port (default: a free one; --state-only: {DEFAULT_FILES_PORT})")
    p.add_argument("--state-only", action="store_true",
                   help="write the viewer state (and a public link where every volume is public) into RUNDIR/view; start nothing")
    p.add_argument("--screenshot", metavar="PNG", default=None,
                   help="render the viewer in a headless Chromium of its own, save it here, stop (needs chromium on PATH)")
    return p
