#!/usr/bin/env bash
# A large store through etcd's snapshot file both ways, with the real tools:
#   etcd (KEYS keys) -> etcdctl snapshot save -> keelson snapshot restore -> keelson serves
#   -> etcdctl snapshot save (from keelson) -> etcdctl snapshot restore -> etcd serves.
# Prints the time and peak memory of every step, and fails when the data differs (HashKV and
# key count at each hop) or when keelson's peak RSS in a step exceeds MAX_KEELSON_RSS_MIB
# (streaming must not buffer the store). Loopback only; every wait is bounded.
#
# usage: bench/snapshot-roundtrip.sh KEELSON_BIN KEELSON_BENCH_BIN   (KEYS=1000000 by default)
set -euo pipefail

KEELSON=${1:?keelson binary}
LOADER=${2:?keelson-bench binary}
ETCD=${ETCD_BIN:-/usr/bin/etcd}
KEYS=${KEYS:-1000000}
MAX_KEELSON_RSS_MIB=${MAX_KEELSON_RSS_MIB:-512}
export ETCDCTL_API=3

WORK=$(mktemp -d /tmp/keelson-snapshot-roundtrip.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CLIENT=$(free_port)
PEER=$(free_port)
EP=127.0.0.1:$CLIENT
member_flags=(--name m1
  --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP"
  --listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER"
  --initial-cluster "m1=http://127.0.0.1:$PEER")
restore_flags=(--name m1 --initial-cluster "m1=http://127.0.0.1:$PEER"
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER")

fail() { echo "snapshot-roundtrip: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

wait_ready() {
  for _ in $(seq 600); do
    etcdctl --endpoints="$EP" endpoint health >/dev/null 2>&1 && return 0
    kill -0 "$1" 2>/dev/null || fail "the server exited before it was ready (log: $2)"
    sleep 0.1
  done
  fail "the server was not ready within 60 s (log: $2)"
}

start() { # name log args...
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  PIDS+=($!)
  SERVER=$!
  wait_ready "$SERVER" "$log"
}

stop() {
  kill "$SERVER"
  for _ in $(seq 300); do kill -0 "$SERVER" 2>/dev/null || return 0; sleep 0.1; done
  fail "the server did not stop within 30 s"
}

state() { # hash and count of the served store
  local hash count
  hash=$(etcdctl --endpoints="$EP" endpoint hashkv -w json | python3 -c 'import sys,json; print(json.load(sys.stdin)[0]["HashKV"]["hash"])')
  count=$(etcdctl --endpoints="$EP" get "" --prefix --keys-only --limit 1 -w json | python3 -c 'import sys,json; print(json.load(sys.stdin).get("count", 0))')
  echo "$hash $count"
}

timed() { # label, then the command: reports its time and peak RSS, prints the RSS in MiB
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" >/dev/null 2>"$WORK/time.err" || {
    cat "$WORK/time.err" >&2; fail "$label failed"; }
  read -r secs kib < "$WORK/time.out"
  echo "$label: $secs s, peak RSS $((kib / 1024)) MiB" >&2
  echo $((kib / 1024))
}

echo "== $KEYS keys, etcd -> keelson -> etcd (work dir $WORK)"
start "$WORK/etcd1.log" "$ETCD" --data-dir "$WORK/etcd1" "${member_flags[@]}" --quota-backend-bytes 8589934592
"$LOADER" load --endpoints "$EP" --total "$KEYS" --key-space-size "$KEYS" --clients 16 --conns 4 | head -1
read -r hash0 count0 < <(state)
[ "$count0" = "$KEYS" ] || fail "etcd holds $count0 keys, not $KEYS"
t=$(now)
etcdctl --endpoints="$EP" snapshot save "$WORK/from-etcd.db" >/dev/null 2>&1 || fail "etcdctl snapshot save from etcd"
echo "etcdctl snapshot save from etcd: $(since "$t") s, etcd peak RSS $(peak_mib "$SERVER") MiB, file $(( $(stat -c %s "$WORK/from-etcd.db") >> 20 )) MiB"
stop

rss=$(timed "keelson snapshot restore" "$KEELSON" snapshot restore "$WORK/from-etcd.db" --data-dir "$WORK/keelson" "${restore_flags[@]}")
[ "$rss" -le "$MAX_KEELSON_RSS_MIB" ] || fail "keelson snapshot restore peaked at $rss MiB"
start "$WORK/keelson.log" "$KEELSON" --data-dir "$WORK/keelson" "${member_flags[@]}"
read -r hash1 count1 < <(state)
[ "$hash1 $count1" = "$hash0 $count0" ] || fail "keelson serves hash $hash1, $count1 keys; etcd had $hash0, $count0"
t=$(now)
etcdctl --endpoints="$EP" snapshot save "$WORK/from-keelson.db" >/dev/null 2>&1 || fail "etcdctl snapshot save from keelson"
rss=$(peak_mib "$SERVER")
echo "etcdctl snapshot save from keelson: $(since "$t") s, keelson peak RSS (start, serve, stream) $rss MiB"
[ "$rss" -le "$MAX_KEELSON_RSS_MIB" ] || fail "keelson peaked at $rss MiB while streaming"
stop

timed "etcdctl snapshot restore" etcdctl snapshot restore "$WORK/from-keelson.db" --data-dir "$WORK/etcd2" "${restore_flags[@]}" >/dev/null
start "$WORK/etcd2.log" "$ETCD" --data-dir "$WORK/etcd2" "${member_flags[@]}" --quota-backend-bytes 8589934592
read -r hash2 count2 < <(state)
[ "$hash2 $count2" = "$hash0 $count0" ] || fail "etcd restored from keelson serves hash $hash2, $count2 keys; the source had $hash0, $count0"
stop
echo "== round trip unchanged: HashKV $hash0, $count0 keys at every hop"
