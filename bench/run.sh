#!/usr/bin/env bash
# Side-by-side benchmark: one gateway node, the Bun peer and the socket.io peer, each driven
# by the same load generator (target/release/loadgen) through the standard scenarios.
# Every server is started fresh for each scenario and stopped after it. Loopback only.
#
#   bench/run.sh                     # everything: about 7 minutes, at most 15 (BUDGET_SECS)
#   SERVERS="gateway bun" SCENARIOS="chat broadcast-5000" bench/run.sh
#   QUICK=1 bench/run.sh             # tiny sizes, a couple of seconds per scenario (smoke)
#
# Environment:
#   SERVERS     subset of: gateway gateway-cf bun socketio before  (default: gateway bun socketio)
#               gateway-cf: the same gateway, driven over Centrifugo's client protocol (JSON,
#               /connection/websocket) instead of v1
#               gateway-hs: the same protocol over HTTP-streaming (/connection/http_stream,
#               commands by POST /emulation): the WebSocket fallback's cost
#               gateway-arch: the same gateway with its default archive on (SQLite in a fresh
#               --data-dir), to measure what the archive costs beside `gateway`
#               before: an earlier gateway build ($GATEWAY_BEFORE), run with the same flags, so
#               that a change is measured before and after in one run
#               gw-<label>: the gateway binary $GATEWAY_VARIANTS/gw-<label> (experiments: an
#               allocator, a scheduling change), same flags
#               <any gateway server>-1w: the same with one runtime worker thread
#               (GATEWAY_WORKER_THREADS=1, and TOKIO_WORKER_THREADS=1 for builds older than
#               --worker-threads), as
#               one-threaded as the Bun peer
#   SCENARIOS   subset of: flood flood-1000 flood-5000 flood-19000 chat chat-240k chat-480k
#               broadcast-5000-100k broadcast-5000 broadcast-10000 churn bigroom bigroom-each bigroom-off
#                                                                (default: all)
#               chat*, churn: rooms in `bench:`, without presence, like the peers.
#               bigroom: 5,000 members join one `room:` channel (presence on) hearing of
#               each other by `presence_diff`; -each: by v1 join/leave pushes; -off: the
#               same room in `bench:`, presence off. The peers have no presence: all three
#               are one subscribe for them.
#   GATEWAY_FLAGS  the gateway's flags beside the fixed ones (default: `--database-url off`,
#               no archive, like the peers); GATEWAY_FLAGS="" runs the default archive (SQLite
#               under a fresh --data-dir per run)
#   BEFORE_FLAGS  the same for the `before` build (default: GATEWAY_FLAGS); builds older than
#               the archive refuse `--database-url`: BEFORE_FLAGS=""
#   RESULTS     output directory          (default: bench/results/<YYYY-MM-DD>)
#   SECRET      JWT secret                (default: a fresh random one)
#   BUDGET_SECS  the runs' time budget; runs that might overrun it are skipped (default 900)
#   NO_BUILD=1  do not run `cargo build --release -p gateway -p loadgen`
#   NO_INSTALL=1  do not install prerequisites (npm ci in bench/peers, matplotlib)
#   LOADGEN_ARGS  extra loadgen options for every run (e.g. "--source-addrs 4")
#   CLIENT      loadgen (default), or outside: bench/outside/client.js on Bun's own WebSocket
#               client, a client that is not ours (v1 servers only: gateway, before, gw-*, bun;
#               flood, chat* and broadcast-* scenarios), same arguments and report fields
#   SYSCALLS=1  count the server's socket syscalls (sendto, write, writev, recvfrom, read,
#               epoll_wait and its pwait forms) with `perf stat` over each run: $RESULTS/logs/<server>-<scenario>.syscalls
#   CARGO_LOCK  lock file cargo runs under (default /tmp/cargo.lock; flock is used if present)
#
# Output: $RESULTS/<server>-<scenario>.json (the loadgen report), $RESULTS/logs/*.log,
# $RESULTS/meta.json (versions, machine), $RESULTS/summary.md and PNG plots (bench/report.py).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SERVERS=${SERVERS:-"gateway bun socketio"}
ALL_SCENARIOS="flood flood-1000 flood-5000 flood-19000 chat chat-240k chat-480k broadcast-5000-100k broadcast-5000 broadcast-10000 churn bigroom bigroom-each bigroom-off"
SCENARIOS=${SCENARIOS:-$ALL_SCENARIOS}
RESULTS=${RESULTS:-bench/results/$(date +%F)}
SECRET=${SECRET:-$(openssl rand -hex 32 2>/dev/null || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
QUICK=${QUICK:-0}
BUDGET_SECS=${BUDGET_SECS:-900}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
CARGO_LOCK=${CARGO_LOCK:-/tmp/cargo.lock}

GATEWAY=${GATEWAY_BIN:-target/release/gateway}
GATEWAY_BEFORE=${GATEWAY_BEFORE:-}
LOADGEN=target/release/loadgen
CLIENT=${CLIENT:-loadgen}
PEERS=bench/peers
BUN=$PEERS/node_modules/.bin/bun

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" | tee -a "$RESULTS/run.log" >&2; }

# --- cleanup: whatever this script started goes away with it --------------------------------
SERVER_PID=""
LOADGEN_PID=""
alive() { # pid: running (a zombie not yet reaped, e.g. inside a trap, counts as gone)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
stop_pid() { # pid: TERM, up to 5 s, then KILL
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  stop_pid "$LOADGEN_PID"
  stop_pid "$SERVER_PID"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

mkdir -p "$RESULTS/logs"
: >"$RESULTS/run.log"

# --- prerequisites ---------------------------------------------------------------------------
for tool in curl node timeout; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done

if [ "${NO_BUILD:-0}" != 1 ]; then
  log "building gateway and loadgen (release)"
  if command -v flock >/dev/null; then
    flock "$CARGO_LOCK" cargo build --release -p gateway -p loadgen
  else
    cargo build --release -p gateway -p loadgen
  fi
fi
for bin in "$GATEWAY" "$LOADGEN"; do
  [ -x "$bin" ] || { log "missing $bin (cargo build --release -p gateway -p loadgen)"; exit 1; }
done

case " $SERVERS " in *" bun "* | *" socketio "*)
  if [ ! -x "$BUN" ] || [ ! -d "$PEERS/node_modules/socket.io" ]; then
    [ "${NO_INSTALL:-0}" != 1 ] || { log "peers not installed: (cd $PEERS && npm ci)"; exit 1; }
    log "installing the peers (npm ci in $PEERS)"
    (cd "$PEERS" && npm ci --no-audit --no-fund)
  fi
esac

# A python3 that has matplotlib, for the plots (the summary table needs none).
PYTHON=""
find_python() {
  local py
  for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import matplotlib' 2>/dev/null; then PYTHON=$py; return 0; fi
  done
  return 1
}
if ! find_python && [ "${NO_INSTALL:-0}" != 1 ]; then
  log "installing matplotlib for the plots"
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y python3-matplotlib || { apt-get update && apt-get install -y python3-matplotlib; }) \
      >>"$RESULTS/logs/install.log" 2>&1 || true
  fi
  find_python || python3 -m pip install --user matplotlib >>"$RESULTS/logs/install.log" 2>&1 || true
  find_python || log "matplotlib unavailable: plots will be skipped (apt-get install -y python3-matplotlib, or pip install matplotlib)"
fi
[ -n "$PYTHON" ] || PYTHON=python3

# Connections per process: the loadgen and the servers need an fd each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

# --- what was measured -----------------------------------------------------------------------
bun_version=$([ -x "$BUN" ] && "$BUN" --version 2>/dev/null || echo null)
sio_version=$(node -p 'require("./'$PEERS'/node_modules/socket.io/package.json").version' 2>/dev/null || echo null)
cat >"$RESULTS/meta.json" <<EOF
{
  "date": "$(date -Is)",
  "git_commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- gateway loadgen 2>/dev/null || echo '+dirty')",
  "gateway": "$($GATEWAY --version 2>/dev/null | head -1)",
  "gateway_before": "$([ -x "$GATEWAY_BEFORE" ] && $GATEWAY_BEFORE --version 2>/dev/null | head -1 || echo none)",
  "bun": "$bun_version",
  "socket_io": "$sio_version",
  "node": "$(node --version)",
  "kernel": "$(uname -sr)",
  "cpu": "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')",
  "cores": $(nproc),
  "mem_gib": $(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo),
  "nofile": $NOFILE,
  "quick": $([ "$QUICK" = 1 ] && echo true || echo false),
  "loadgen_args": "$LOADGEN_ARGS",
  "servers": [$(printf '"%s",' $SERVERS | sed 's/,$//')],
  "scenarios": [$(printf '"%s",' $SCENARIOS | sed 's/,$//')]
}
EOF

# --- servers ---------------------------------------------------------------------------------
server_url() {
  case $1 in
    gateway-cf*) echo "ws://127.0.0.1:8080/connection/websocket" ;;
    gateway-hs*) echo "http://127.0.0.1:8080/connection/http_stream" ;;
    gateway* | before* | gw-*) echo "ws://127.0.0.1:8080/ws" ;;
    bun) echo "ws://127.0.0.1:9001/ws" ;;
    socketio) echo "ws://127.0.0.1:9002/socket.io/?EIO=4&transport=websocket" ;;
  esac
}
server_health() {
  case $1 in
    gateway* | before* | gw-*) echo "http://127.0.0.1:8080/healthz" ;;
    bun) echo "http://127.0.0.1:9001/healthz" ;;
    socketio) echo "http://127.0.0.1:9002/healthz" ;;
  esac
}
server_protocol() {
  case $1 in
    socketio) echo socketio ;;
    gateway-cf*) echo centrifugo ;;
    gateway-hs*) echo centrifugo-http-stream ;;
    *) echo v1 ;;
  esac
}

# start_server <server> <logfile>: sets SERVER_PID to the server process itself (no wrapper),
# so that the loadgen's --pid reads the server's own RSS and CPU.
start_server() {
  local server=$1 logfile=$2 i
  if curl -fsS -o /dev/null --max-time 1 "$(server_health "$server")" 2>/dev/null; then
    log "$server: something already answers $(server_health "$server"); stop it first"
    return 1
  fi
  case $server in
    gateway | gateway-cf | gateway-hs | gateway-arch | before | gw-* | *-1w)
      local bin=$GATEWAY workers=""
      if [ "${server%-1w}" != "$server" ]; then
        workers=1
        server=${server%-1w}
      fi
      server=${server%-cf}
      server=${server%-hs}
      local archive=""
      [ "$server" = gateway-arch ] && { archive=1; server=gateway; }
      if [ "$server" = before ]; then
        [ -x "$GATEWAY_BEFORE" ] || { log "before: set GATEWAY_BEFORE to an earlier gateway binary"; return 1; }
        bin=$GATEWAY_BEFORE
      elif [ "${server#gw-}" != "$server" ]; then
        bin=${GATEWAY_VARIANTS:-}/$server
        [ -x "$bin" ] || { log "$server: no executable $bin (set GATEWAY_VARIANTS)"; return 1; }
      fi
      # No archive: the peers store nothing either (bench/archive.sh measures its cost).
      local flags=${GATEWAY_FLAGS---database-url off}
      [ "$server" = before ] && flags=${BEFORE_FLAGS-$flags}
      [ -n "$archive" ] && flags=
      # With the archive on, a fresh data directory per run: each starts empty.
      case " $flags " in
        *" --database-url off "*) ;;
        *) [ "$server" = before ] || flags="$flags --data-dir $(mktemp -d /tmp/bench-gw-data.XXXXXX)" ;;
      esac
      # An HTTP-streaming client holds two HTTP connections (its stream, and its commands'
      # keep-alive POSTs), both counted by --max-http-connections: raised with the rest.
      # shellcheck disable=SC2086 # $flags is a word list on purpose
      env ${workers:+GATEWAY_WORKER_THREADS=$workers TOKIO_WORKER_THREADS=$workers} \
        "$bin" --listen 127.0.0.1:8080 --jwt-secret "$SECRET" --log warn $flags \
        --publish-rate 1000000 --publish-burst 1000000 \
        --max-connections-per-user 100000 --max-connections 200000 \
        --max-http-connections 200000 >"$logfile" 2>&1 &
      ;;
    bun) PORT=9001 "$BUN" "$PEERS/bun/server.js" >"$logfile" 2>&1 & ;;
    socketio) PORT=9002 node "$PEERS/socketio/server.js" >"$logfile" 2>&1 & ;;
    *) log "unknown server $server"; return 1 ;;
  esac
  SERVER_PID=$!
  for i in $(seq 100); do
    if curl -fsS -o /dev/null --max-time 1 "$(server_health "$server")" 2>/dev/null; then return 0; fi
    alive "$SERVER_PID" || break
    sleep 0.1
  done
  log "$server did not come up; see $logfile"
  tail -5 "$logfile" >&2 || true
  stop_pid "$SERVER_PID"
  SERVER_PID=""
  return 1
}

# --- scenarios -------------------------------------------------------------------------------
# scenario_args <name>: the loadgen subcommand and its options; scenario_secs: the expected
# length, for a hard timeout (setup + measured phase + margin).
scenario_args() {
  if [ "$QUICK" = 1 ]; then
    case $1 in
      flood) echo "flood --connections 500 --rate 2000 --hold 1" ;;
      flood-*) echo "flood --connections $((${1#flood-} / 20)) --rate 2000 --hold 1" ;;
      chat*) echo "chat --users 100 --room-size 20 --rate 2 --duration 2 --channel-prefix bench:" ;;
      broadcast-5000-100k) echo "broadcast --subscribers 250 --publishers 1 --rate 20 --duration 2" ;;
      broadcast-*) echo "broadcast --subscribers $((${1#broadcast-} / 20)) --publishers 1 --rate 200 --duration 2" ;;
      churn) echo "churn --measured 40 --room-size 20 --rate 2 --churn-rate 20 --duration 2 --channel-prefix bench:" ;;
      bigroom) echo "bigroom --members 250 --hold 1" ;;
      bigroom-each) echo "bigroom --members 250 --hold 1 --join-leave each" ;;
      bigroom-off) echo "bigroom --members 250 --hold 1 --channel bench:bigroom --join-leave off" ;;
    esac
    return
  fi
  case $1 in
    flood) echo "flood --connections 10000 --rate 5000 --hold 5" ;;
    flood-*) echo "flood --connections ${1#flood-} --rate 5000 --hold 5" ;;
    # 2,000 users in rooms of 20 at 2 msg/s each: 80k deliveries/s; then 3× and 6× the rate.
    chat) echo "chat --users 2000 --room-size 20 --rate 2 --duration 20 --channel-prefix bench:" ;;
    chat-240k) echo "chat --users 2000 --room-size 20 --rate 6 --duration 15 --channel-prefix bench:" ;;
    chat-480k) echo "chat --users 2000 --room-size 20 --rate 12 --duration 15 --channel-prefix bench:" ;;
    # 20 publications/s to 5,000: 100k deliveries/s, below saturation, each one its own write.
    broadcast-5000-100k) echo "broadcast --subscribers 5000 --publishers 1 --rate 20 --duration 15" ;;
    broadcast-*) echo "broadcast --subscribers ${1#broadcast-} --publishers 1 --rate 200 --duration 10" ;;
    churn) echo "churn --measured 200 --room-size 20 --rate 2 --churn-rate 200 --duration 20 --channel-prefix bench:" ;;
    bigroom) echo "bigroom --members 5000 --hold 3" ;;
    bigroom-each) echo "bigroom --members 5000 --hold 3 --join-leave each" ;;
    bigroom-off) echo "bigroom --members 5000 --hold 3 --channel bench:bigroom --join-leave off" ;;
  esac
}
scenario_secs() { # connects at a pessimistic 1,000/s + loadgen's 15 s connect timeout
  # + the scenario's own length + its 3 s drain + 10 s margin
  [ "$QUICK" = 1 ] && { echo 30; return; }
  case $1 in
    flood) echo 45 ;; flood-1000) echo 35 ;; flood-5000) echo 40 ;; flood-19000) echo 55 ;;
    chat) echo 50 ;; chat-*) echo 45 ;; broadcast-5000 | broadcast-5000-100k) echo 45 ;; broadcast-10000) echo 50 ;;
    churn) echo 50 ;; bigroom | bigroom-off) echo 40 ;; bigroom-each) echo 90 ;;
  esac
}

valid_scenario() { case " $ALL_SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

FAILED=()
run_one() { # server scenario
  local server=$1 scenario=$2 out logfile rc args
  out="$RESULTS/$server-$scenario.json"
  logfile="$RESULTS/logs/$server-$scenario.server.log"
  args=$(scenario_args "$scenario")
  rm -f "$out"
  start_server "$server" "$logfile" || { FAILED+=("$server-$scenario (server did not start)"); return 0; }
  log "$server $scenario: $CLIENT $args (server pid $SERVER_PID)"
  local client=("$LOADGEN")
  [ "$CLIENT" = outside ] && client=("$BUN" bench/outside/client.js)
  # shellcheck disable=SC2086 # $args and $LOADGEN_ARGS are word lists on purpose
  timeout -k 10 "$(scenario_secs "$scenario")" "${client[@]}" $args \
    --url "$(server_url "$server")" --secret "$SECRET" --protocol "$(server_protocol "$server")" \
    --json "$out" --pid "$SERVER_PID" --no-progress $LOADGEN_ARGS \
    >"$RESULTS/logs/$server-$scenario.loadgen.log" 2>&1 &
  LOADGEN_PID=$!
  local perf_pid=""
  if [ "${SYSCALLS:-0}" = 1 ]; then
    perf stat -x, -o "$RESULTS/logs/$server-$scenario.syscalls" -p "$SERVER_PID" \
      -e syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev \
      -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait \
      -e syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_pwait2 \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  rc=0
  wait "$LOADGEN_PID" || rc=$?
  LOADGEN_PID=""
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ] || [ ! -s "$out" ]; then
    log "$server $scenario: loadgen exited $rc$([ -s "$out" ] || echo ', no report') (see $RESULTS/logs/$server-$scenario.loadgen.log)"
    FAILED+=("$server-$scenario (loadgen exit $rc)")
  fi
  alive "$SERVER_PID" || { log "$server died during $scenario"; FAILED+=("$server-$scenario (server died)"); }
  stop_pid "$SERVER_PID"
  SERVER_PID=""
  sleep 1 # let the kernel settle the closed sockets before the next server binds
}

for scenario in $SCENARIOS; do
  valid_scenario "$scenario" || { log "unknown scenario $scenario (known: $ALL_SCENARIOS)"; exit 2; }
done

START=$(date +%s)
log "results in $RESULTS; servers: $SERVERS; scenarios: $SCENARIOS$([ "$QUICK" = 1 ] && echo ' (QUICK)')"
for scenario in $SCENARIOS; do
  for server in $SERVERS; do
    # The whole run stays within BUDGET_SECS: a run that might not end in time is skipped.
    if [ $(($(date +%s) - START + $(scenario_secs "$scenario") + 10)) -gt "$BUDGET_SECS" ]; then
      log "$server $scenario: skipped, it might not end within BUDGET_SECS=$BUDGET_SECS"
      FAILED+=("$server-$scenario (skipped: time budget)")
      continue
    fi
    run_one "$server" "$scenario"
  done
done
log "clustered mode (three nodes on Redis) is measured by bench/cluster.sh"
log "all runs took $(($(date +%s) - START)) s"

"$PYTHON" bench/report.py "$RESULTS" || log "report.py failed"

if [ ${#FAILED[@]} -gt 0 ]; then
  log "failed runs: ${FAILED[*]}"
  exit 1
fi
