#!/usr/bin/env bash
# Authenticated requests per second, keelson against etcd, in one run on one machine.
#
# For each server: a fresh member on loopback, root plus a plain user "bench" whose role may
# read and write the "b/" prefix (and the bench tool's probe key), auth enabled with simple
# tokens; then keelson-bench as that user with CLIENTS clients over CONNS connections:
# one-key Ranges (serializable unless CONSISTENCY=l) and Puts. The same loads without auth give
# the baseline.
# Rounds alternate between the servers so that a noisy neighbour hurts both alike.
#
#   bench/auth-bench.sh [KEELSON_BIN] [BENCH_BIN]
#   ROUNDS=2 DURATION=10s CLIENTS=64 CONNS=8 CONSISTENCY=s bench/auth-bench.sh
set -euo pipefail

KEELSON=${1:-${CARGO_TARGET_DIR:-target}/release/keelson}
BENCH=${2:-${CARGO_TARGET_DIR:-target}/release/keelson-bench}
ETCD=${ETCD_BIN:-/usr/bin/etcd}
ETCDCTL=${ETCDCTL_BIN:-/usr/bin/etcdctl}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-64}
CONNS=${CONNS:-8}
CONSISTENCY=${CONSISTENCY:-s}
WORK=$(mktemp -d /tmp/keelson-auth-bench.XXXXXX)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

# ops/s of a keelson-bench JSON report, and its errors if there were any.
SUMMARY='
import json, sys
r = json.load(sys.stdin)
errors = r["errors"]["total"]
print(round(r["ops_per_sec"]), "(%d errors: %s)" % (errors, r["errors"]["kinds"]) if errors else "")
'

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start KIND -> sets PID and EP
start() {
    local kind=$1 bin client peer dir
    client=$(free_port); peer=$(free_port)
    dir="$WORK/$kind-$RANDOM"
    if [ "$kind" = keelson ]; then bin=$KEELSON; else bin=$ETCD; fi
    "$bin" --name bench --data-dir "$dir" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" >"$dir.log" 2>&1 &
    PID=$!
    EP="127.0.0.1:$client"
    for _ in $(seq 200); do
        grep -q "ready to serve client requests" "$dir.log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$kind did not start:" >&2; tail -5 "$dir.log" >&2; exit 2
}

stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }

enable_auth() {
    local c="$ETCDCTL --endpoints=$EP"
    echo rootpw | $c user add root --interactive=false >/dev/null
    $c user grant-role root root >/dev/null
    echo benchpw | $c user add bench --interactive=false >/dev/null
    $c role add bench >/dev/null
    $c role grant-permission bench readwrite b/ --prefix >/dev/null
    $c role grant-permission bench readwrite keelson-bench-probe >/dev/null
    $c user grant-role bench bench >/dev/null
    $c auth enable >/dev/null
}

# load MODE AUTH -> ops/s
load() {
    local mode=$1 auth=$2 args=()
    if [ "$mode" = range ]; then args=(range --consistency "$CONSISTENCY"); else args=(put); fi
    if [ "$auth" = on ]; then args+=(--user bench --password benchpw); fi
    "$BENCH" "${args[@]}" --endpoints "$EP" --clients "$CLIENTS" --conns "$CONNS" \
        --prefix b/ --key-space-size 10000 --total 100000000 --duration "$DURATION" --json \
        | python3 -c "$SUMMARY"
}

echo "| round | server | auth | range ops/s | put ops/s |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
    for kind in keelson etcd; do
        for auth in off on; do
            start "$kind"
            "$BENCH" put --endpoints "$EP" --prefix b/ --key-space-size 10000 --sequential-keys \
                --total 10000 --clients 16 --conns 4 >/dev/null
            [ "$auth" = on ] && enable_auth
            r=$(load range "$auth"); p=$(load put "$auth")
            echo "| $round | $kind | $auth | $r | $p |"
            stop
        done
    done
done
