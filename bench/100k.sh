#!/usr/bin/env bash
# 100,000 connections on six gateway nodes on this machine: on one redis-server, then on a
# three-primary Redis Cluster (MODES="redis cluster"). For each:
#   1. six nodes start (--max-connections 20000 each: a process holds about 20,000 sockets);
#   2. loadgen opens CONNS idle connections round-robin over the nodes, from several
#      127.0.0.x source addresses and worker processes, and holds them;
#   3. after HOLD seconds idle, a chat load (2,000 users in rooms of 20 spread over all six
#      nodes, so most deliveries cross nodes, CHAT_RATE messages/s each) runs while the
#      100,000 stay open;
#   4. Redis's commands and CPU during the idle minute and during the chat are read.
# Prints a summary table and writes the loadgen reports, Redis stats and the table to
# bench/results/<date>-100k/. Bounded: every loadgen run has a duration and a timeout;
# about 7 minutes per mode on 2 cores.
#
#   bench/100k.sh                      # both modes
#   MODES=cluster CONNS=30000 bench/100k.sh
#   CONNS=100000 RATE=2000 PING_INTERVAL=60 IDLE_TIMEOUT=150 bench/100k.sh   # BENCHMARKS.md, "100,000 connections"
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NO_BUILD:-}" = 1 ] || cargo build --release -p gateway -p loadgen
B=${BIN_DIR:-target/release}
MODES=${MODES:-"redis cluster"}
CONNS=${CONNS:-100000}
NODES=${NODES:-6}
HOLD=${HOLD:-60}
CHAT_SECS=${CHAT_SECS:-30}
# Messages per second per chat user: 2,000 users in rooms of 20 at 0.5 msg/s are 1,000
# publishes/s and about 20,000 deliveries/s, next to 100,000 idle connections on two cores.
CHAT_RATE=${CHAT_RATE:-0.5}
RATE=${RATE:-1500}
SOURCES=${SOURCES:-5}
# The nodes' --idle-timeout-secs (the gateway's default is 60).
IDLE_TIMEOUT=${IDLE_TIMEOUT:-60}
# The nodes' --ping-interval-secs (the gateway's default is 25): keepalive pings are most of
# an idle connection's CPU.
PING_INTERVAL=${PING_INTERVAL:-25}
OUT=${OUT:-bench/results/$(date +%Y-%m-%d)-100k}
SECRET=$(openssl rand -hex 32)
BASE_PORT=${BASE_PORT:-8400}
REDIS_PORT=${REDIS_PORT:-6420}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pids=()
redis_ports=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # mode
  redis_ports=()
  if [ "$1" = redis ]; then
    redis-server --port "$REDIS_PORT" --save '' --appendonly no --dir "$work" >/dev/null &
    pids+=($!)
    redis_ports=("$REDIS_PORT")
    sleep 0.5
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  else
    local hosts=()
    for i in 1 2 3; do
      local port=$((REDIS_PORT + i))
      mkdir -p "$work/c$port"
      (cd "$work/c$port" && exec redis-server --port "$port" --cluster-enabled yes \
        --cluster-config-file nodes.conf --save '' --appendonly no) >/dev/null &
      pids+=($!)
      redis_ports+=("$port")
      hosts+=("127.0.0.1:$port")
    done
    sleep 0.5
    redis-cli --cluster create "${hosts[@]}" --cluster-yes >/dev/null
    for port in "${redis_ports[@]}"; do
      until redis-cli -p "$port" cluster info | grep -q cluster_state:ok; do sleep 0.2; done
    done
    REDIS_URL="redis-cluster://${hosts[0]}?node=${hosts[1]}&node=${hosts[2]}"
  fi
}

redis_reset() { for p in "${redis_ports[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done; }
redis_calls() { # total command calls since the last reset
  for p in "${redis_ports[@]}"; do redis-cli -p "$p" info commandstats; done |
    sed -n 's/^cmdstat_[^:]*:calls=\([0-9]*\),.*/\1/p' | awk '{ s += $1 } END { print s + 0 }'
}
redis_cpu() { # user+sys CPU seconds of every Redis server
  for p in "${redis_ports[@]}"; do redis-cli -p "$p" info cpu; done |
    awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.2f", s }'
}
redis_commands() { # the busiest commands since the last reset, summed over servers
  for p in "${redis_ports[@]}"; do redis-cli -p "$p" info commandstats; done |
    sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\),.*/\1 \2/p' |
    awk '{ c[$1] += $2 } END { for (k in c) print c[k], k }' | sort -rn | head -8 | tr '\n' ';'
}
connections() { # open connections over all nodes
  local n=0
  for i in $(seq 1 "$NODES"); do
    local c
    c=$(curl -s "127.0.0.1:$((BASE_PORT + i))/metrics" | awk '/^gateway_connections / { print $2 }')
    n=$((n + ${c%.*}))
  done
  echo "$n"
}
rss_kib() { # summed RSS of the nodes
  local s=0
  for p in "${node_pids[@]}"; do s=$((s + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status"))); done
  echo "$s"
}

summary="$OUT/summary.md"
{
  echo "| Redis | connections | connects/s | KiB per idle connection (RSS, six nodes) | Redis calls/s idle | Redis CPU idle | chat deliveries/s | p50 / p99 / p99.9 ms | Redis calls per publish | Redis CPU per publish µs | audit (gaps, dups, reorders, lost) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} >"$summary"

for mode in $MODES; do
  echo "== $mode: $NODES nodes, $CONNS connections"
  start_redis "$mode"
  node_pids=()
  urls=()
  for i in $(seq 1 "$NODES"); do
    port=$((BASE_PORT + i))
    $B/gateway --jwt-secret "$SECRET" --listen "127.0.0.1:$port" --node-id "node-$i" \
      --redis-url "$REDIS_URL" --max-connections 20000 --max-connections-per-user 10 \
      --max-http-connections 20000 --publish-rate 1000000 --publish-burst 1000000 \
      --idle-timeout-secs "$IDLE_TIMEOUT" --ping-interval-secs "$PING_INTERVAL" --database-url off --log warn >"$work/node-$i.log" 2>&1 &
    pids+=($!)
    node_pids+=($!)
    urls+=(--url "ws://127.0.0.1:$port/ws")
  done
  sleep 2
  pid_args=()
  for p in "${node_pids[@]}"; do pid_args+=(--pid "$p"); done
  rss_before=$(rss_kib)
  # A timeline for the plot: seconds, open connections, summed RSS of the nodes (KiB).
  (
    t0=$(date +%s.%N)
    while true; do
      echo "$(echo "$(date +%s.%N) - $t0" | bc),$(connections),$(rss_kib)"
      sleep 2
    done
  ) >"$OUT/$mode-timeline.csv" 2>/dev/null &
  sampler=$!
  pids+=($sampler)
  # The idle connections, held until the chat is over.
  hold=$((HOLD + CHAT_SECS + 30))
  timeout $((CONNS / 500 + hold + 120)) $B/loadgen flood --secret "$SECRET" --connections "$CONNS" \
    --rate "$RATE" --hold "$hold" --source-addrs "$SOURCES" "${urls[@]}" "${pid_args[@]}" \
    --no-progress --json "$OUT/$mode-flood.json" >"$OUT/$mode-flood.txt" 2>&1 &
  flood=$!
  started=$(date +%s.%N)
  deadline=$(($(date +%s) + CONNS / 500 + 60))
  # Until every connection is open, or the count stopped growing for 15 s (some connects
  # failed: the flood report counts them by cause).
  last_count=0
  last_growth=$(date +%s)
  last_growth_at=$started
  until [ "$(connections)" -ge "$CONNS" ]; do
    count=$(connections)
    if [ "$count" -gt "$last_count" ]; then
      last_count=$count
      last_growth=$(date +%s)
      last_growth_at=$(date +%s.%N)
    fi
    if [ "$(date +%s)" -gt "$deadline" ] || [ $(($(date +%s) - last_growth)) -ge 15 ] ||
      ! kill -0 "$flood" 2>/dev/null; then
      echo "only $(connections) of $CONNS connections opened" >&2
      break
    fi
    sleep 0.5
  done
  open=$(connections)
  # Until the last connection opened (a stalled tail's 15 s not counted).
  [ "$open" -gt "$last_count" ] && last_growth_at=$(date +%s.%N)
  connect_secs=$(echo "$last_growth_at - $started" | bc)
  echo "   $open connections in ${connect_secs} s"
  redis_reset
  cpu0=$(redis_cpu)
  sleep "$HOLD"
  idle_calls=$(redis_calls)
  idle_cpu=$(echo "$(redis_cpu) - $cpu0" | bc)
  idle_top=$(redis_commands)
  rss_idle=$(rss_kib)
  per_conn=$(echo "scale=2; ($rss_idle - $rss_before) / ($open + 1)" | bc)
  echo "   idle: ${per_conn} KiB per connection, Redis $((idle_calls / HOLD)) calls/s, ${idle_cpu} s CPU in ${HOLD} s ($idle_top)"
  redis_reset
  cpu0=$(redis_cpu)
  timeout $((CHAT_SECS + 120)) $B/loadgen chat --secret "$SECRET" --users 2000 --room-size 20 --rate "$CHAT_RATE" \
    --duration "$CHAT_SECS" --channel-prefix bench: "${urls[@]}" "${pid_args[@]}" --no-progress \
    --json "$OUT/$mode-chat.json" >"$OUT/$mode-chat.txt" 2>&1 || echo "chat exited with $?" >&2
  chat_calls=$(redis_calls)
  chat_cpu=$(echo "$(redis_cpu) - $cpu0" | bc)
  chat_top=$(redis_commands)
  echo "   chat: Redis ($chat_top)"
  open_after=$(connections)
  timeouts=0
  for i in $(seq 1 "$NODES"); do
    t=$(curl -s "127.0.0.1:$((BASE_PORT + i))/metrics" |
      awk '/^gateway_disconnects_total\{code="heartbeat_timeout"\}/ { print $2 }')
    timeouts=$((timeouts + ${t:-0}))
  done
  echo "   still open after the chat: $open_after; heartbeat timeouts: $timeouts"
  wait "$flood" || echo "flood exited with $?" >&2
  kill "$sampler" 2>/dev/null || true
  {
    echo "mode=$mode open=$open connect_secs=$connect_secs rss_before_kib=$rss_before rss_idle_kib=$rss_idle"
    echo "idle: calls=$idle_calls cpu_secs=$idle_cpu top=$idle_top"
    echo "chat: calls=$chat_calls cpu_secs=$chat_cpu top=$chat_top open_after=$open_after heartbeat_timeouts=$timeouts"
  } >"$OUT/$mode-redis.txt"
  python3 - "$OUT/$mode-chat.json" "$mode" "$open" "$connect_secs" "$per_conn" "$idle_calls" \
    "$HOLD" "$idle_cpu" "$chat_calls" "$chat_cpu" >>"$summary" <<'EOF'
import json, sys
chat = json.load(open(sys.argv[1]))
mode, open_, secs, per_conn, idle_calls, hold, idle_cpu, calls, cpu = sys.argv[2:]
sent = max(chat["sent"], 1)
lat = chat.get("latency_ms") or {}
print(f"| {mode} | {int(open_):,} | {int(open_) / float(secs):,.0f} | {float(per_conn):.2f} | "
      f"{int(idle_calls) / int(hold):,.0f} | {float(idle_cpu):.2f} s in {hold} s | "
      f"{chat['deliveries_per_sec'] or 0:,.0f} | "
      f"{lat.get('p50', 0):.2f} / {lat.get('p99', 0):.2f} / {lat.get('p999', 0):.2f} | "
      f"{int(calls) / sent:.2f} | {float(cpu) * 1e6 / sent:.1f} | "
      f"{chat['gaps']}, {chat['duplicates']}, {chat['reorders']}, {chat['lost']} |")
EOF
  grep -h "panicked" "$work"/node-*.log && echo "a node panicked" >&2
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
  sleep 1
done
cat "$summary"
python3 bench/plot100k.py "$OUT" || true
