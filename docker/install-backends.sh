#!/usr/bin/env bash
# Install optional pseudo-label backends into an image's locked environment, at the versions the
# locks fix (docker/Dockerfile's ALSEG_BACKENDS build argument; run from the repository root).
#
#   docker/install-backends.sh microsam            # install (a comma-separated list; empty: nothing)
#   docker/install-backends.sh --print microsam    # print the pip requirements only (tests/deploy)
#
# Backends:
#   microsam  micro-SAM, at the version locks/cpu.txt pins (the `annotate` extra, which the CPU lock
#             holds and the CUDA lock leaves out), with its dependencies under the lock the image
#             was installed from plus locks/cpu.txt as constraints: packages the locks share keep
#             their tested versions, the others come at locks/cpu.txt's, and torch stays the one
#             installed. Weights are never downloaded: mount them (docker/README.md).
#   sam       nothing to install: segment-anything is an alseg dependency, in both locks.
# CellSAM is not offered: neither it (not on PyPI) nor what `import cellSAM` needs (dask's
# distributed, dask-image) is in the locks; see docker/README.md.
#
# After an install, torch must be the version and build it was before (else the script fails), and
# each backend must import.
set -euo pipefail

say() { printf '[backends] %s\n' "$*" >&2; }
die() { printf '[backends] error: %s\n' "$*" >&2; exit 1; }

print_only=0
if [[ "${1:-}" == --print ]]; then
  print_only=1
  shift
fi
[[ $# -le 1 ]] || die "usage: $0 [--print] BACKEND[,BACKEND...]"
list="${1:-}"
[[ -f locks/cpu.txt ]] || die "run from the repository root (no locks/cpu.txt here)"

# The exact pin of a package in a lock ("name==version" at the start of a line).
pin() {
  local lock=$1 name=$2 version
  version="$(sed -n "s/^${name}==\([^ ]*\).*/\1/p" "$lock" | head -n 1)"
  [[ -n "$version" ]] || die "$lock pins no $name"
  printf '%s==%s\n' "$name" "$version"
}

requirements=()
imports=()
for backend in ${list//,/ }; do
  case "$backend" in
    microsam) requirements+=("$(pin locks/cpu.txt micro-sam)"); imports+=(micro_sam.automatic_segmentation) ;;
    sam) ;;
    *) die "unknown backend '$backend' (known: microsam, sam)" ;;
  esac
done

if [[ "$print_only" == 1 ]]; then
  [[ ${#requirements[@]} -eq 0 ]] || printf '%s\n' "${requirements[@]}"
  exit 0
fi
if [[ ${#requirements[@]} -eq 0 ]]; then
  say "no backend to install"
  exit 0
fi

venv="${ALSEG_VENV:-.venv}"
py="$venv/bin/python"
stamp="$venv/.alseg-install-stamp"
installed_lock="$(sed -n 's/^lock=//p' "$stamp" 2>/dev/null || true)"
[[ -f "$installed_lock" ]] || die "$venv is not a locked install of scripts/install.sh (no lock in $stamp)"

# Constraints: every pin of the installed lock, then locks/cpu.txt's pins of packages it lacks.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
awk -F'==' '
  FNR == NR && /^[a-z0-9]/ { sub(/ .*/, ""); seen[$1] = 1; print; next }
  FNR != NR && /^[a-z0-9]/ && !($1 in seen) { sub(/ .*/, ""); print }
' "$installed_lock" locks/cpu.txt > "$work/constraints.txt"

torch_before="$("$py" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
say "installing ${requirements[*]} under $installed_lock and locks/cpu.txt"
PIP_CONSTRAINT="$work/constraints.txt" "$py" -m pip install --quiet "${requirements[@]}"
torch_after="$("$py" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
[[ "$torch_after" == "$torch_before" ]] || die "installing the backends changed torch ($torch_before -> $torch_after)"
for module in "${imports[@]}"; do
  "$py" -c "import $module" || die "$module does not import after the install"
done
say "installed: ${requirements[*]} (torch $torch_after unchanged)"
