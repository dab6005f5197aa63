#!/usr/bin/env bash
# Starts a local NATS cluster with JetStream for `fm bench engine --event-log jetstream` (BENCHMARKS.md):
# N nodes (default 3) on loopback, client ports 4222.., cluster ports 6222.., a store dir each under DIR
# (default a new temp dir). Runs in the foreground; Ctrl-C (or SIGTERM) stops every node.
#
#   scripts/nats-cluster.sh [NODES] [DIR]
#   fm bench engine --event-log jetstream --event-nats nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 --event-replicas 3 ...
#
# Uses NATS_SERVER, else the nats-server that scripts/test.sh installs into target/pyenv, else PATH's.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-3}"
dir="${2:-$(mktemp -d)}"
server="${NATS_SERVER:-}"
if [ -z "$server" ]; then
    if [ -x target/pyenv/bin/nats-server ]; then server=target/pyenv/bin/nats-server; else server=nats-server; fi
fi
routes=""
for i in $(seq 0 $((nodes - 1))); do routes="${routes:+$routes,}nats://127.0.0.1:$((6222 + i))"; done
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in $(seq 0 $((nodes - 1))); do
    mkdir -p "$dir/n$i"
    args=(-a 127.0.0.1 -p $((4222 + i)) -n "n$i" -js -sd "$dir/n$i")
    if [ "$nodes" -gt 1 ]; then
        args+=(--cluster_name fm-bench --cluster "nats://127.0.0.1:$((6222 + i))" --routes "$routes")
    fi
    "$server" "${args[@]}" &
    pids+=($!)
done
echo "nats cluster of $nodes node(s) on 127.0.0.1:4222.. (store in $dir); Ctrl-C stops it" >&2
wait
