#!/usr/bin/env bash
# Build partita's Python package into a virtualenv of its own and run its pytest suite.
#
# Everything it needs (maturin, pytest, numpy, polars, pandas, pyarrow) is installed into
# that virtualenv by this script: nothing is installed by hand. The virtualenv and the Rust
# build live outside the clone ($HOME/.cache/partita by default) so reruns are incremental.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${PARTITA_CACHE:-$HOME/.cache/partita}"
venv="${PARTITA_VENV:-$cache/venv}"
export CARGO_TARGET_DIR="${PARTITA_PYTHON_TARGET:-$cache/python-target}"

if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating the virtualenv $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi
echo "==> installing the test requirements"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements-test.txt"

echo "==> building partita._partita (maturin develop)"
(cd "$here" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --quiet)

echo "==> pytest"
# pytest and the clusters it starts get a temporary folder of their own, checked afterwards
# for anything partita left behind (silent when there is nothing, so pytest's summary stays
# the last line).
scratch="$(mktemp -d "${TMPDIR:-/tmp}/partita-pytest.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
cd "$here"
TMPDIR="$scratch" "$venv/bin/python" -m pytest -q tests "$@"
"$here/../scripts/check-no-leftovers" "$scratch" "the Python tests"
