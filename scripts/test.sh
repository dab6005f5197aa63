#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs every test of the
# workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi

# One target dir for every crate and test binary; tests run on the machine's cores.
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo test --workspace --locked
