#!/usr/bin/env bash
# The archive's cost and throughput on one embedded node, at the same load with the archive
# off, on SQLite (the default) and on PostgreSQL (a fresh database on 127.0.0.1:5432):
#   1. chat, 2,000 users in rooms of 20, 1 message/s each (2,000 publishes/s, 40,000
#      deliveries/s) for 20 s: delivery latency and server CPU, then the archive's lag;
#   2. throughput: 1,000 users publishing 20/s each (a 20,000/s offered load) for 10 s; the
#      archive's write rate, sampled each second, and how long it takes to catch up.
# About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NO_BUILD:-}" = 1 ] || cargo build --release -p gateway -p loadgen
B=target/release
SECRET=$(openssl rand -hex 32)
PGURL_ADMIN=${PGURL_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}
DB=bench_archive_$$
DATA=$(mktemp -d)
PORT=8241
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DATA"
  psql "$PGURL_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql "$PGURL_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
PGURL=${PGURL_ADMIN%/*}/$DB

metric() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
start() { # database-url
  $B/gateway --jwt-secret "$SECRET" --listen 127.0.0.1:$PORT --log warn \
    --publish-rate 1000000 --publish-burst 1000000 --max-connections-per-user 100000 \
    --data-dir "$DATA" --database-url "$1" >/dev/null 2>&1 &
  pid=$!
  sleep 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

for store in off "sqlite://$DATA/archive.db" "$PGURL"; do
  name=${store%%:*}
  echo "== $name: chat 2,000 users, rooms of 20, 1/s each, 20 s"
  start "$store"
  $B/loadgen chat --users 2000 --room-size 20 --rate 1 --duration 20 --secret "$SECRET" \
    --url ws://127.0.0.1:$PORT/ws --pid "$pid" --no-progress \
    | grep -E "latency|server CPU|messages|errors"
  if [ "$name" != off ]; then
    echo "archive after the run: pending $(metric gateway_archive_pending), lag $(metric gateway_archive_lag_seconds) s, written $(metric gateway_archive_written_total) in $(metric gateway_archive_batches_total) batches"
    echo "== $name: throughput, 1,000 users x 20/s offered for 10 s"
    before=$(metric gateway_archive_written_total)
    $B/loadgen chat --users 1000 --room-size 10 --rate 20 --duration 10 --secret "$SECRET" \
      --url ws://127.0.0.1:$PORT/ws --pid "$pid" --no-progress >/tmp/archive-bench-$$.txt &
    lg=$!
    last=$before; peak=0; t=0
    while kill -0 "$lg" 2>/dev/null || [ "$(metric gateway_archive_pending)" != 0 ]; do
      sleep 1; t=$((t + 1))
      now=$(metric gateway_archive_written_total)
      rate=$(( ${now%.*} - ${last%.*} )); last=$now
      [ "$rate" -gt "$peak" ] && peak=$rate
      [ "$t" -gt 120 ] && break
    done
    wait "$lg" || true
    grep -E "messages|latency" /tmp/archive-bench-$$.txt; rm -f /tmp/archive-bench-$$.txt
    total=$(( ${last%.*} - ${before%.*} ))
    echo "archived $total messages in ${t} s from the start (peak $peak/s, mean $((total / t))/s)"
  fi
  stop
done
