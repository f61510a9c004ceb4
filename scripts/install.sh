#!/usr/bin/env bash
# Install alseg into a virtual environment, from nothing, idempotently.
#
#   scripts/install.sh                  # creates ./.venv (or $ALSEG_VENV): exactly the locked set, alseg editable
#   ALSEG_UNLOCKED=1 scripts/install.sh # resolves pyproject.toml afresh (newest versions) instead
#
# What it guarantees:
#   * by default the environment holds exactly the versions in the lock for its torch kind
#     (locks/cpu.txt or locks/cuda.txt, written by `make lock`, never by hand): every locked
#     package at its locked version, packages the lock does not list removed, alseg editable;
#   * torch is a CPU build where no CUDA device is present, and nothing installed afterwards can
#     replace it (every later pip call runs under a constraint: the lock, or, unlocked, a pin of
#     the torch that is there);
#   * on CPU machines where the only torchvision that resolves beside torch is a CUDA build (whose
#     C extension cannot load), a lazy start-up hook defines the two operator schemas torchvision
#     registers fakes for, so `import timm` and nnU-Net's trainer lookup work. The hook lives in the
#     virtual environment only, never in the package, and is installed only when torchvision fails;
#   * a second run with nothing changed returns in about a second (the stamp
#     $ALSEG_VENV/.alseg-install-stamp records the inputs, the lock and its sha256).
#
# Knobs (environment):
#   ALSEG_VENV             virtual environment folder            (default: .venv)
#   PYTHON                 interpreter that creates it           (default: python3, needs >= 3.11;
#                          the locks are made for 3.11)
#   ALSEG_TORCH            cpu | cuda | auto                     (default: auto = cuda iff nvidia-smi sees a GPU)
#                          and so the lock: cpu -> locks/cpu.txt, cuda -> locks/cuda.txt
#   ALSEG_UNLOCKED         1: ignore the lock, resolve pyproject.toml afresh (newest versions)
#   ALSEG_TORCH_VERSION    torch version for unlocked CPU installs (default: 2.13.0; locked: the lock's)
#   ALSEG_TORCH_INDEX_URL  extra pip index holding CPU torch wheels, for machines that have no local
#                          CPU wheel (the default index serves CUDA builds on Linux), e.g.
#                          https://download.pytorch.org/whl/cpu
#   ALSEG_KEEP_PINS        unlocked only: a requirements file whose pins the resolution keeps (as
#                          pip constraints; `make lock` passes the committed lock, so adding a
#                          dependency moves no other package)
#   ALSEG_EXTRAS           extras to install; unlocked: default dev; locked: the lock's extras
#                          (its "# extras:" line) are always all installed, and naming one the
#                          lock lacks is an error
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${ALSEG_VENV:-.venv}"
python="${PYTHON:-python3}"
torch_mode="${ALSEG_TORCH:-auto}"
unlocked="${ALSEG_UNLOCKED:-0}"
stamp="$venv/.alseg-install-stamp"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export RAY_USAGE_STATS_ENABLED=0

say() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

if [[ "$torch_mode" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then torch_mode=cuda; else torch_mode=cpu; fi
fi
[[ "$torch_mode" == cpu || "$torch_mode" == cuda ]] || die "ALSEG_TORCH must be cpu, cuda or auto, got '$torch_mode'"

[[ "$unlocked" == 0 || "$unlocked" == 1 ]] || die "ALSEG_UNLOCKED must be 0 or 1, got '$unlocked'"

if [[ "$unlocked" == 1 ]]; then
  lock=""
  torch_version="${ALSEG_TORCH_VERSION:-2.13.0}"
  extras="${ALSEG_EXTRAS:-dev}"
else
  # The lock decides every version: torch's included, and the extras.
  lock="locks/$torch_mode.txt"
  [[ -f "$lock" ]] || die "no lock $lock: run 'make lock', or set ALSEG_UNLOCKED=1 to resolve afresh"
  extras="$(sed -n 's/^# extras: *//p' "$lock" | head -n 1)"
  torch_version="$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$lock" | head -n 1)"
  [[ -n "$extras" && -n "$torch_version" ]] || die "$lock has no '# extras:' line or no torch pin: regenerate it with 'make lock'"
  if [[ -n "${ALSEG_EXTRAS:-}" ]]; then
    for e in ${ALSEG_EXTRAS//,/ }; do
      [[ ",$extras," == *",$e,"* ]] || die "extra '$e' is not in $lock (it locks [$extras]); add it to the lock (locks/generate.sh, 'make lock') or set ALSEG_UNLOCKED=1"
    done
  fi
  if [[ -n "${ALSEG_TORCH_VERSION:-}" && "${ALSEG_TORCH_VERSION}" != "${torch_version%%+*}" && "${ALSEG_TORCH_VERSION}" != "$torch_version" ]]; then
    die "ALSEG_TORCH_VERSION=$ALSEG_TORCH_VERSION but $lock pins torch==$torch_version; set ALSEG_UNLOCKED=1 for another torch"
  fi
fi

# The stamp covers everything that decides what gets installed (one key=value per line; the
# lock test reads it).
inputs=(pyproject.toml scripts/install.sh scripts/torchvision_shim.py ${lock:+"$lock"})
want="inputs_sha256=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
mode=$([[ "$unlocked" == 1 ]] && echo unlocked || echo locked)
lock=${lock:-none}
lock_sha256=$([[ -n "$lock" ]] && sha256sum "$lock" | cut -d' ' -f1 || echo none)
torch=$torch_mode
torch_version=$torch_version
extras=$extras"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/alseg" ]]; then
  say "up to date ($venv)"
  exit 0
fi

start=$(date +%s)
rm -f "$stamp"  # a run that stops half-way must not leave the environment looking up to date
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$python is $("$python" --version 2>&1); alseg needs Python >= 3.11 (set PYTHON=...)"
  say "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip=(quiet_pip "$py" -m pip install --quiet)
# pip repeats one warning per package for index folders a machine's pip.conf names but lacks:
# keep real errors, drop that noise.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# 1. torch first, so that the constraint below pins what is there.
torch_now="$("$py" -W ignore -c 'import torch; print(torch.__version__, torch.version.cuda or "cpu")' 2>/dev/null || true)"
# Locked, torch must be the lock's exact version string ("===": 2.13.0+cpu, or 2.13.0 and not a
# +cpu/+cuXXX build that "==2.13.0" would also accept).
stale=0 eq="=="
[[ -n "$lock" ]] && eq="==="
[[ -n "$lock" && -n "$torch_now" && "${torch_now%% *}" != "$torch_version" ]] && stale=1
if [[ "$torch_mode" == cpu ]]; then
  if [[ -z "$torch_now" || "$torch_now" != *" cpu" || "$stale" == 1 ]]; then
    say "installing torch$eq$torch_version (CPU build)"
    if [[ -n "${ALSEG_TORCH_INDEX_URL:-}" ]]; then
      "${pip[@]}" "torch$eq$torch_version" --extra-index-url "$ALSEG_TORCH_INDEX_URL"
    else
      "${pip[@]}" "torch$eq$torch_version"
    fi
  fi
  cuda="$("$py" -W ignore -c 'import torch; print(torch.version.cuda or "")')"
  [[ -z "$cuda" ]] || die "torch in $venv is a CUDA build ($cuda) on a machine without a GPU; set ALSEG_TORCH_INDEX_URL to an index with CPU wheels, or remove $venv"
elif [[ -n "$lock" ]]; then
  if [[ -z "$torch_now" || "$stale" == 1 ]]; then
    say "installing torch===$torch_version (CUDA machine, locked)"
    "${pip[@]}" "torch===$torch_version"
  fi
  cuda="$("$py" -W ignore -c 'import torch; print(torch.version.cuda or "")')"
  [[ -n "$cuda" ]] || die "torch===$torch_version in $venv is a CPU build; $lock wants the index's CUDA build (check pip's find-links / extra index settings)"
elif [[ -z "$torch_now" ]]; then
  say "installing torch (CUDA machine)"
  "${pip[@]}" torch
fi

# 2. everything else.
if [[ -n "$lock" ]]; then
  # Locked: first remove what the lock does not list (left by an unlocked install or an older
  # lock), then install every line of the lock with alseg, under the lock as constraint (so
  # alseg's own requirements resolve to the locked versions too). If pip then had to add a package
  # the lock lacks, the lock is stale against pyproject.toml: stop, and say so.
  unlisted() {
    "$py" - "$lock" <<'PY'
import importlib.metadata as md, re, sys, sysconfig
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
lines = (l.split("#", 1)[0].strip() for l in open(sys.argv[1], encoding="utf-8"))
keep = {norm(l.split("==", 1)[0]) for l in lines if l} | {"alseg", "pip", "setuptools", "wheel"}
site = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
print(" ".join(sorted({d.metadata["Name"] for d in md.distributions(path=site) if norm(d.metadata["Name"]) not in keep})))
PY
  }
  leftovers="$(unlisted)"
  if [[ -n "$leftovers" ]]; then
    say "removing packages $lock does not list: $leftovers"
    "$py" -m pip uninstall --yes --quiet $leftovers
  fi
  say "installing $lock (sha256 $(sha256sum "$lock" | cut -c1-12)) and alseg[$extras] (editable)"
  PIP_CONSTRAINT="$lock" "${pip[@]}" -r "$lock" -e ".[${extras}]"
  added="$(unlisted)"
  [[ -z "$added" ]] || die "pyproject.toml needs packages $lock lacks ($added): the lock is stale; run 'make lock' (or ALSEG_UNLOCKED=1)"
else
  # Unlocked: resolve afresh (newest versions allowed by pyproject.toml, also over what an
  # earlier install left) under a constraint that pins the installed torch exactly (its local
  # tag too, so that the upgrade cannot swap a +cpu build for the index's CUDA one).
  constraints="$venv/alseg-constraints.txt"
  "$py" -W ignore -c 'import torch; print("torch==" + torch.__version__)' > "$constraints"
  if [[ -n "${ALSEG_KEEP_PINS:-}" ]]; then  # versions to keep (make lock: the committed lock's), torch's line aside
    [[ -f "$ALSEG_KEEP_PINS" ]] || die "ALSEG_KEEP_PINS names no file: $ALSEG_KEEP_PINS"
    grep -E '^[A-Za-z0-9]' "$ALSEG_KEEP_PINS" | grep -v -E '^torch==' >> "$constraints" || true
    say "keeping the $(grep -c '==' "$constraints") versions pinned in $ALSEG_KEEP_PINS"
  fi
  say "installing alseg[$extras] (editable, unlocked: newest versions) with $(head -n 1 "$constraints")"
  PIP_CONSTRAINT="$constraints" "${pip[@]}" --upgrade --upgrade-strategy eager -e ".[${extras}]"
fi

# 3. the torchvision trap (CPU only): install the lazy shim only if torchvision cannot import.
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$py" -c 'import torchvision' >/dev/null 2>&1; then
  if [[ "$torch_mode" != cpu ]]; then
    die "torchvision does not import on this CUDA machine: $("$py" -c 'import torchvision' 2>&1 | tail -n 1)"
  fi
  say "torchvision's C extension cannot load beside CPU torch: installing the lazy operator-schema shim"
  cp scripts/torchvision_shim.py "$site/_alseg_torchvision_shim.py"
  echo "import _alseg_torchvision_shim" > "$site/_alseg_torchvision_shim.pth"
  "$py" -c 'import torchvision, timm' >/dev/null 2>&1 \
    || die "torchvision still fails after the shim: $("$py" -c 'import torchvision' 2>&1 | tail -n 1)"
fi

"$py" -c 'import alseg' || die "alseg does not import after installation"
echo "$want" > "$stamp"
say "done in $(( $(date +%s) - start )) s: activate with 'source $venv/bin/activate' or call $venv/bin/alseg"
