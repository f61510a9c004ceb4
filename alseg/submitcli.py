"""The batch commands: ``alseg submit``, ``alseg jobs``, ``alseg logs``, ``alseg stop`` (Ray's Jobs
API, :mod:`alseg.runtime.jobs`) and ``alseg run-submitted``, what a submitted job runs."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from alseg.errors import SpecError
from alseg.runtime import jobs
from alseg.spec import load_spec


def _address(args: argparse.Namespace) -> str:
    if args.address:
        return args.address
    ray_address = os.environ.get("RAY_ADDRESS", "")  # Ray's own way to point `ray job submit` at a cluster
    return (os.environ.get("RAY_API_SERVER_ADDRESS") or (ray_address if ray_address.startswith(("http://", "https://")) else "")
            or jobs.DEFAULT_ADDRESS)


def _client(args: argparse.Namespace) -> Any:
    return jobs.client(_address(args), args.token_env)


def cmd_submit(args: argparse.Namespace) -> int:
    # every spec is checked before the first is submitted: a batch goes in whole or not at all
    batch = []
    for path in args.specs:
        spec = load_spec(path)
        jobs.check_portable(spec, path)
        with open(path) as fh:
            batch.append((path, spec, fh.read()))
    c = _client(args)
    ids = []
    for path, spec, text in batch:
        sid = jobs.submit(c, spec, text, stage=args.stage)
        ids.append(sid)
        res = jobs.driver_resources(spec, args.stage)
        print(f"{sid}  {spec.name}  ({args.stage}; driver: {res.describe()})  from {path}")
    if not args.wait:
        print(f"follow one with: alseg logs JOB --follow{'' if args.address is None else ' --address ' + args.address}")
        return 0
    failed = 0
    for sid in ids:
        final = jobs.follow(c, sid, lambda text: print(text, end="", flush=True))
        print(f"{sid}: {final}")
        failed += final != "SUCCEEDED"
    return 1 if failed else 0


def cmd_jobs(args: argparse.Namespace) -> int:
    rows = jobs.rows(_client(args), every=args.all)
    if not rows:
        print("no alseg jobs on this cluster" + ("" if args.all else " (--all lists every job)"))
        return 0
    print(f"{'job':<44} {'status':<10} {'stage':<11} {'started':<19} {'took':>8}  name / run dir / message")
    for r in rows:
        started = "-" if r.start_s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.start_s))
        took = "-" if r.start_s is None else f"{(r.end_s or time.time()) - r.start_s:.0f} s"
        tail = f"  {r.message}" if r.status in ("FAILED", "STOPPED") and r.message else ""
        print(f"{r.id:<44} {r.status:<10} {r.stage:<11} {started:<19} {took:>8}  {r.name} / {r.run_dir}{tail}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    c = _client(args)
    if not args.follow:
        print(jobs.logs(c, args.job), end="")
        return 0
    final = jobs.follow(c, args.job, lambda text: print(text, end="", flush=True))
    print(f"{args.job}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def cmd_stop(args: argparse.Namespace) -> int:
    c = _client(args)
    if jobs.stop(c, args.job):
        print(f"{args.job}: stopping (a rerun of the same spec resumes from its finished stages and blocks)")
    else:
        print(f"{args.job}: already ended ({jobs.status(c, args.job)})")
    return 0


def cmd_run_submitted(args: argparse.Namespace) -> int:
    from alseg import __version__
    from alseg.cli import build_parser

    text = os.environ.get(jobs.SPEC_ENV)
    if not text:
        raise SpecError(f"alseg run-submitted runs inside a job that `alseg submit` made (no ${jobs.SPEC_ENV} here)")
    wanted = os.environ.get(jobs.VERSION_ENV)
    if wanted != __version__:
        raise SpecError(f"this job was submitted with alseg {wanted}, and this node runs alseg {__version__}: "
                        "install the same version on the cluster (the images of docker/ pin it) or submit with this one")
    with tempfile.TemporaryDirectory(prefix="alseg-job-") as tmp:  # this process's own copy of the spec
        path = os.path.join(tmp, "spec.yaml")
        with open(path, "w") as fh:
            fh.write(text)
        inner = build_parser().parse_args([args.stage, path] + (["-q"] if args.quiet else []))
        return int(inner.func(inner) or 0)


def add_submit_parsers(sub: Any) -> None:
    def add(name: str, fn, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description)
        p.set_defaults(func=fn)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    def cluster(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None,
                       help="the cluster's Jobs API (default $RAY_API_SERVER_ADDRESS, else an http(s) $RAY_ADDRESS, else "
                            f"{jobs.DEFAULT_ADDRESS})")
        p.add_argument("--token-env", default=jobs.TOKEN_ENV, metavar="NAME",
                       help=f"environment variable holding the cluster's token, sent as a header (default {jobs.TOKEN_ENV})")

    p = add("submit", cmd_submit, "submit job specs to a Ray cluster (one job each, through Ray's Jobs API)",
            "Validate every spec, then submit each as a job to the Ray cluster's Jobs API: the spec's text and "
            "this alseg's version travel in the job's runtime environment (no local path is sent; relative paths "
            "in a spec are refused), the driver asks for resources.nnunet where it trains nnU-Net. A job that "
            "stops or fails resumes from its finished stages when the same spec is submitted again.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="YAML job specs")
    p.add_argument("--stage", choices=jobs.STAGES, default="run", help="what each job runs (default: the whole job)")
    p.add_argument("--wait", action="store_true", help="follow the jobs' logs until all have ended; exit 1 if any failed")
    cluster(p)
    p = add("jobs", cmd_jobs, "list alseg's jobs on a Ray cluster",
            "One line per job that alseg submitted: its id, status, stage, start, duration, name and run directory.")
    p.add_argument("--all", action="store_true", help="every job on the cluster, not only alseg's")
    cluster(p)
    p = add("logs", cmd_logs, "print a submitted job's log", "Print a job's log; --follow until it ends.")
    p.add_argument("job", help="job id (alseg jobs lists them)")
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends; exit 1 unless it succeeded")
    cluster(p)
    p = add("stop", cmd_stop, "stop a submitted job", "Ask the cluster to stop a job (its finished stages and blocks stay).")
    p.add_argument("job", help="job id (alseg jobs lists them)")
    cluster(p)
    p = add("run-submitted", cmd_run_submitted, "what a job made by `alseg submit` runs on the cluster",
            f"Inside a submitted job: read the spec from ${jobs.SPEC_ENV}, check that this node's alseg is the "
            "submitting one's, and run the stage.")
    p.add_argument("stage", choices=jobs.STAGES)
