#!/usr/bin/env bash
# partita's whole test suite, as the README's second command and CI (.ci/run) run it.
#
# Formatting and lints first (cheap, and they fail fast), then the quickstart example as a
# smoke test of the README's first command, then every Rust test: unit, integration (one
# binary, tests/integration) and doc tests. The Python suite joins here when
# python-bindings/ lands. The last lines printed are cargo test's own summaries.
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep builds incremental across fresh clones: the target directory lives outside the clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/partita/target}"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "== quickstart example"
cargo run --locked --quiet --bin quickstart

echo "== cargo test"
cargo test --locked --workspace
