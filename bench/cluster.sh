#!/usr/bin/env bash
# Clustered mode against one node, at the same load: chat (2,000 users in rooms of 20) and a
# broadcast to 2,002 subscribers, each on one embedded node, then on gateway nodes sharing
# one private redis-server (chat over two nodes; broadcast with subscribers on nodes A and B
# and publishers on node C, so every delivery crosses nodes). Prints loadgen's figures and
# Redis's command counts and CPU for each clustered run. About 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NO_BUILD:-}" = 1 ] || cargo build --release -p gateway -p loadgen
B=target/release
SECRET=$(openssl rand -hex 32)
REDIS_PORT=${REDIS_PORT:-6398}
CHAT="chat --users 2000 --room-size 20 --rate 2 --duration 20"
BROADCAST="broadcast --subscribers 2000 --publishers 2 --rate 20 --duration 15"
# No archive on either side (bench/archive.sh measures it).
common=(--jwt-secret "$SECRET" --publish-rate 1000000 --publish-burst 1000000 --log warn --database-url off)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

node() { # port [redis]: starts a node, prints its pid
  local extra=()
  [ -n "${2:-}" ] && extra=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
  $B/gateway "${common[@]}" --listen "127.0.0.1:$1" "${extra[@]}" >/dev/null 2>&1 &
  pids+=($!)
  echo $!
}
show() { grep -E "latency|server CPU|messages|audit|errors"; }
redis_stats() {
  redis-cli -p "$REDIS_PORT" info commandstats | grep -E "calls=" | sed 's/,usec_per_call.*//'
  redis-cli -p "$REDIS_PORT" info cpu | grep -E "used_cpu_(sys|user):"
}

redis-server --port "$REDIS_PORT" --save '' --appendonly no >/dev/null &
pids+=($!)
sleep 0.5

echo "== chat, one embedded node"
p=$(node 8231); sleep 1
$B/loadgen $CHAT --secret "$SECRET" --url ws://127.0.0.1:8231/ws --pid "$p" --no-progress | show
kill "$p"
echo "== chat, two nodes on Redis (connections round-robin)"
a=$(node 8232 r); node 8233 r >/dev/null; sleep 1
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
$B/loadgen $CHAT --secret "$SECRET" --url ws://127.0.0.1:8232/ws --url ws://127.0.0.1:8233/ws \
  --pid "$a" --no-progress | show
redis_stats
cleanup; pids=()
redis-server --port "$REDIS_PORT" --save '' --appendonly no >/dev/null &
pids+=($!)
sleep 0.5

echo "== broadcast, one embedded node"
p=$(node 8234); sleep 1
$B/loadgen $BROADCAST --secret "$SECRET" --url ws://127.0.0.1:8234/ws --pid "$p" --no-progress | show
kill "$p"
echo "== broadcast, subscribers on nodes A and B, publishers on node C"
a=$(node 8235 r); node 8236 r >/dev/null; node 8237 r >/dev/null; sleep 1
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
$B/loadgen $BROADCAST --secret "$SECRET" --url ws://127.0.0.1:8235/ws --url ws://127.0.0.1:8236/ws \
  --publisher-url ws://127.0.0.1:8237/ws --pid "$a" --no-progress | show
redis_stats
