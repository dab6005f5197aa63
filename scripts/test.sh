#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs every test of the
# workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi

# kubectl: the operator tests drive `fm serve` with it (Debian's kubernetes-client is old but speaks the API).
if ! command -v kubectl >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        (apt-get install -y kubernetes-client || sudo apt-get install -y kubernetes-client) >/dev/null 2>&1 || true
    fi
    command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required by tests/operator.rs" >&2; exit 1; }
fi

# The original FlowMason Python client and the Kubernetes client it drives, from PyPI, for the
# compatibility test in tests/operator.rs (skipped when already there).
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c 'import flowmason_core.kubernetes, kubernetes' 2>/dev/null; then
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet flowmason kubernetes
fi

# One target dir for every crate and test binary; tests run on the machine's cores.
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo test --workspace --locked
