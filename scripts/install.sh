#!/usr/bin/env bash
# Install alseg into a virtual environment, from nothing, idempotently.
#
#   scripts/install.sh            # creates ./.venv (or $ALSEG_VENV) and installs alseg[dev] editable
#
# What it guarantees:
#   * torch is a CPU build where no CUDA device is present, and nothing installed afterwards can
#     replace it (every later pip call runs under a constraint pinning the torch that is there);
#   * on CPU machines where the only torchvision that resolves beside torch is a CUDA build (whose
#     C extension cannot load), a lazy start-up hook defines the two operator schemas torchvision
#     registers fakes for, so `import timm` and nnU-Net's trainer lookup work. The hook lives in the
#     virtual environment only, never in the package, and is installed only when torchvision fails;
#   * a second run with nothing changed returns in about a second.
#
# Knobs (environment):
#   ALSEG_VENV             virtual environment folder            (default: .venv)
#   PYTHON                 interpreter that creates it           (default: python3, needs >= 3.11)
#   ALSEG_TORCH            cpu | cuda | auto                     (default: auto = cuda iff nvidia-smi sees a GPU)
#   ALSEG_TORCH_VERSION    torch version for CPU installs         (default: 2.13.0)
#   ALSEG_TORCH_INDEX_URL  extra pip index holding CPU torch wheels, for machines that have no local
#                          CPU wheel (the default index serves CUDA builds on Linux)
#   ALSEG_EXTRAS           extras to install                     (default: dev)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="${ALSEG_VENV:-.venv}"
python="${PYTHON:-python3}"
torch_mode="${ALSEG_TORCH:-auto}"
torch_version="${ALSEG_TORCH_VERSION:-2.13.0}"
extras="${ALSEG_EXTRAS:-dev}"
stamp="$venv/.alseg-install-stamp"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export RAY_USAGE_STATS_ENABLED=0

say() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

if [[ "$torch_mode" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then torch_mode=cuda; else torch_mode=cpu; fi
fi
[[ "$torch_mode" == cpu || "$torch_mode" == cuda ]] || die "ALSEG_TORCH must be cpu, cuda or auto, got '$torch_mode'"

# The stamp covers everything that decides what gets installed.
want="$(cat pyproject.toml scripts/install.sh scripts/torchvision_shim.py | sha256sum | cut -c1-16) $torch_mode $torch_version $extras"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/alseg" ]]; then
  say "up to date ($venv)"
  exit 0
fi

start=$(date +%s)
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
if [[ "$torch_mode" == cpu ]]; then
  if [[ -z "$torch_now" || "$torch_now" != *" cpu" ]]; then
    say "installing torch==$torch_version (CPU build)"
    if [[ -n "${ALSEG_TORCH_INDEX_URL:-}" ]]; then
      "${pip[@]}" "torch==$torch_version" --extra-index-url "$ALSEG_TORCH_INDEX_URL"
    else
      "${pip[@]}" "torch==$torch_version"
    fi
  fi
  cuda="$("$py" -W ignore -c 'import torch; print(torch.version.cuda or "")')"
  [[ -z "$cuda" ]] || die "torch in $venv is a CUDA build ($cuda) on a machine without a GPU; set ALSEG_TORCH_INDEX_URL to an index with CPU wheels, or remove $venv"
elif [[ -z "$torch_now" ]]; then
  say "installing torch (CUDA machine)"
  "${pip[@]}" torch
fi

# 2. everything else, under a constraint that pins the installed torch.
constraints="$venv/alseg-constraints.txt"
"$py" -W ignore -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$constraints"
say "installing alseg[$extras] (editable) with $(cat "$constraints")"
PIP_CONSTRAINT="$constraints" "${pip[@]}" -e ".[${extras}]"

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
