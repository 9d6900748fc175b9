#!/usr/bin/env bash
# partita's whole test suite, as the README's second command and CI (.ci/run) run it.
#
# Formatting and lints first (cheap, and they fail fast), then the quickstart example as a
# smoke test of the README's first command, then doc tests (including the README's), then
# every other Rust test: unit and integration (one binary, tests/integration), then the
# Python suite (python-bindings/run-tests.sh builds the extension into a virtualenv of its
# own with maturin and runs pytest). Each runner prints its own summary; pytest's is last.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep builds incremental across fresh clones: the target directory lives outside the clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/partita/target}"

echo "== cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path python-bindings/Cargo.toml --check

echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "== quickstart example"
cargo run --locked --quiet --bin quickstart

echo "== doc tests"
cargo test --locked --workspace --doc

echo "== unit and integration tests"
# The tests get a temporary folder of their own: anything partita leaves in it (a cluster's
# folder, a spill directory) is a leak, reported below.
scratch="$(mktemp -d "${TMPDIR:-/tmp}/partita-tests.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
if cargo nextest --version >/dev/null 2>&1; then
    TMPDIR="$scratch" cargo nextest run --locked --workspace --no-fail-fast
else
    TMPDIR="$scratch" cargo test --locked --workspace --lib --bins --tests --no-fail-fast
fi
scripts/check-no-leftovers "$scratch" "the Rust tests"

echo "== matrix products through OpenBLAS (feature blas)"
if scripts/ensure-openblas; then
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --locked -p partita-tests --features partita/blas -E 'test(/linalg/)'
    else
        cargo test --locked -p partita-tests --features partita/blas --test integration linalg
    fi
else
    echo "OpenBLAS is not installed and cannot be: the blas feature is not tested here"
fi

echo "== Python: build partita into its own virtualenv, then pytest"
python-bindings/run-tests.sh
