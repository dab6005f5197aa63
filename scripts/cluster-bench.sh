#!/usr/bin/env bash
# The cluster benchmark (issue 12; figures in BENCHMARKS.md): throughput of sharded `fm operator`
# replicas through the Kubernetes API with the JetStream event log, their CPU per run, and the failover
# time of a killed replica.
#
#   cargo build --release --bin fm
#   scripts/cluster-bench.sh [--replicas 1|2|3] [--runs K] [--stage-ms MS] [--lease-seconds S] [--shards N]
#
# Starts, on loopback, a 3-node NATS cluster (the stream has 3 replicas), `fm serve --no-controllers
# --no-triggers` as the API server and N `fm operator --event-log jetstream` replicas; waits until every
# shard Lease is held, then
#   1. throughput: creates K PipelineRuns of a Pipeline of two `delay` stages (MS each) at once and times
#      them from the first create until all are Succeeded: runs/s, and CPU seconds (user + system, from
#      /proc/<pid>/stat) of all replicas together per run;
#   2. failover (N >= 2): starts 30 runs of 2 x 2 s, SIGKILLs the replica with the most of them running,
#      and times from the kill until every one of its unfinished runs names another replica in
#      status.replica (resumed there); prints the survivors' flowmason_shard_failover_seconds too.
# Everything it started is stopped on exit. Uses FM (default target/release/fm) and NATS_SERVER (default
# the nats-server scripts/test.sh installs into target/pyenv, else PATH's); needs kubectl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

replicas=3 runs=300 stage_ms=100 lease=3 shards=16
while [ $# -gt 0 ]; do
    case "$1" in
        --replicas) replicas="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --stage-ms) stage_ms="$2"; shift 2 ;;
        --lease-seconds) lease="$2"; shift 2 ;;
        --shards) shards="$2"; shift 2 ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$replicas" in 1|2|3) ;; *) echo "--replicas $replicas: expected 1, 2 or 3" >&2; exit 2 ;; esac

fm="${FM:-target/release/fm}"
[ -x "$fm" ] || { echo "$fm is missing: cargo build --release --bin fm (or set FM)" >&2; exit 2; }
server="${NATS_SERVER:-}"
if [ -z "$server" ]; then
    if [ -x target/pyenv/bin/nats-server ]; then server=target/pyenv/bin/nats-server; else server=nats-server; fi
fi

dir="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# CPU seconds (user + system) of a process: fields 14 and 15 of /proc/<pid>/stat, after the command.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }

# 1. NATS cluster of 3 nodes.
declare -a client_ports cluster_ports monitor_ports
for i in 0 1 2; do client_ports[$i]=$(free_port); cluster_ports[$i]=$(free_port); monitor_ports[$i]=$(free_port); done
routes="" urls=""
for i in 0 1 2; do
    routes="${routes:+$routes,}nats://127.0.0.1:${cluster_ports[$i]}"
    urls="${urls:+$urls,}nats://127.0.0.1:${client_ports[$i]}"
done
for i in 0 1 2; do
    mkdir -p "$dir/nats$i"
    "$server" -a 127.0.0.1 -p "${client_ports[$i]}" -m "${monitor_ports[$i]}" -n "bench$i" -js -sd "$dir/nats$i" \
        --cluster_name fm-cluster-bench --cluster "nats://127.0.0.1:${cluster_ports[$i]}" \
        --routes "$routes" >/dev/null 2>&1 &
    pids+=($!)
done

# JetStream is up once every node's /healthz says so (the cluster has elected its meta leader).
for i in 0 1 2; do
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:${monitor_ports[$i]}/healthz" >/dev/null && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:${monitor_ports[$i]}/healthz" >/dev/null || { echo "nats node $i is not healthy" >&2; exit 1; }
done

# 2. The API server; its kubeconfig.
FM_LOG=error "$fm" serve --no-controllers --no-triggers --bind 127.0.0.1:0 --data-dir "$dir/api" \
    >"$dir/api.out" 2>"$dir/api.err" &
pids+=($!)
for _ in $(seq 300); do grep -q '^export KUBECONFIG=' "$dir/api.out" 2>/dev/null && break; sleep 0.1; done
export KUBECONFIG="$(sed -n 's/^export KUBECONFIG=//p' "$dir/api.out")"
[ -n "$KUBECONFIG" ] || { echo "fm serve did not start: $(cat "$dir/api.err")" >&2; exit 1; }

# 3. The replicas r0..r(N-1).
declare -a rpid rhttp
start_replica() {
    local i="$1"
    FM_LOG=error "$fm" operator --kubeconfig "$KUBECONFIG" --data-dir "$dir/r$i" \
        --event-log jetstream --event-nats "$urls" --event-replicas 3 --shards "$shards" \
        --identity "r$i" --lease-seconds "$lease" --http-bind 127.0.0.1:0 --webhook-bind 127.0.0.1:0 \
        2>"$dir/r$i.err" >/dev/null &
    rpid[$i]=$!
    pids+=($!)
}
for i in $(seq 0 $((replicas - 1))); do start_replica "$i"; done
for i in $(seq 0 $((replicas - 1))); do
    for _ in $(seq 600); do
        rhttp[$i]="$(sed -n 's/^history API, web UI (\/ui\/), \/metrics, \/healthz and \/readyz on //p' "$dir/r$i.err")"
        [ -n "${rhttp[$i]}" ] && break
        kill -0 "${rpid[$i]}" 2>/dev/null || { echo "replica r$i exited: $(cat "$dir/r$i.err")" >&2; exit 1; }
        sleep 0.1
    done
done
# Balanced: every shard Lease held, by as many holders as replicas.
held() { kubectl get leases -l flowmason.io/lease=shard -o json |
    jq -r '[.items[] | select((.spec.holderIdentity // "") != "") | .spec.holderIdentity] | "\(length) \(unique | length)"'; }
for _ in $(seq 600); do [ "$(held)" = "$shards $replicas" ] && break; sleep 0.2; done
[ "$(held)" = "$shards $replicas" ] || { echo "shards never balanced over $replicas replicas: $(held)" >&2; exit 1; }

pipeline() { # name, stage ms
    kubectl apply -f - >/dev/null <<EOF
apiVersion: flowmason.io/v1
kind: Pipeline
metadata: {name: $1, namespace: default}
spec:
  stages:
    - {id: first, componentType: delay, config: {ms: $2}}
    - {id: second, componentType: delay, dependsOn: [first], config: {ms: $2}}
EOF
}
create_runs() { # pipeline, count
    for i in $(seq 1 "$2"); do
        printf -- '---\napiVersion: flowmason.io/v1\nkind: PipelineRun\nmetadata: {name: %s-%s, namespace: default}\nspec: {pipelineRef: %s}\n' "$1" "$i" "$1"
    done | kubectl create -f - >/dev/null
}
count_phase() { # pipeline, phase
    kubectl get pipelineruns -l "flowmason.io/pipeline=$1" -o json |
        jq --arg p "$2" '[.items[] | select(.status.phase == $p)] | length'
}
total_cpu() { local sum=0; for i in "$@"; do sum=$(echo "$sum + $(cpu_seconds "${rpid[$i]}")" | bc -l); done; echo "$sum"; }
all=$(seq 0 $((replicas - 1)))

# Throughput.
pipeline bench "$stage_ms"
cpu0=$(total_cpu $all)
t0=$(now)
create_runs bench "$runs"
until [ "$(count_phase bench Succeeded)" -ge "$runs" ]; do sleep 0.2; done
t1=$(now)
cpu1=$(total_cpu $all)
elapsed=$(echo "$t1 - $t0" | bc -l)
printf 'replicas %s, shards %s, %s runs of 2 x %s ms delay stages: %.2f s, %.1f runs/s, %.2f ms CPU per run (all replicas: %.2f CPU s)\n' \
    "$replicas" "$shards" "$runs" "$stage_ms" "$elapsed" "$(echo "$runs / $elapsed" | bc -l)" \
    "$(echo "($cpu1 - $cpu0) * 1000 / $runs" | bc -l)" "$(echo "$cpu1 - $cpu0" | bc -l)"
kubectl get pipelineruns -l flowmason.io/pipeline=bench -o json |
    jq -r '[.items[].status.replica // "none"] | group_by(.) | map("\(.[0]): \(length)") | "runs by replica: " + join(", ")'

# Failover.
[ "$replicas" -ge 2 ] || exit 0
pipeline slow 2000
create_runs slow 30
for _ in $(seq 600); do [ "$(count_phase slow Running)" -ge 10 ] && break; sleep 0.1; done
victim=$(kubectl get pipelineruns -l flowmason.io/pipeline=slow -o json |
    jq -r '[.items[] | select(.status.phase == "Running") | .status.replica] | group_by(.) | max_by(length) | .[0]')
i="${victim#r}"
kill -KILL "${rpid[$i]}"
tk=$(now)
wait "${rpid[$i]}" 2>/dev/null || true
# Its unfinished runs: resumed when another replica names itself in their status.
until [ "$(kubectl get pipelineruns -l flowmason.io/pipeline=slow -o json |
    jq --arg v "$victim" '[.items[] | select(.status.replica == $v and (.status.phase == "Running" or .status.phase == "Pending"))] | length')" -eq 0 ]; do
    sleep 0.05
done
tr=$(now)
until [ "$(count_phase slow Succeeded)" -ge 30 ]; do sleep 0.2; done
printf 'failover: kill -9 of %s (lease %s s) -> its runs running on other replicas: %.2f s\n' "$victim" "$lease" "$(echo "$tr - $tk" | bc -l)"
for j in $all; do
    [ "$j" = "$i" ] && continue
    curl -s "${rhttp[$j]}/metrics" | awk -v r="r$j" '/^flowmason_shard_failover_seconds_(sum|count) / { printf "  %s %s %s\n", r, $1, $2 }'
done
