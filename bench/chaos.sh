#!/usr/bin/env bash
# The chaos audit, long: three gateway nodes on a durable redis-server with PostgreSQL
# archiving, chat traffic, and round after round of faults in an order drawn from a seed: a
# node SIGKILLed (its clients dial it while it is dead) and restarted, Redis frozen while a
# node is killed, Redis SIGKILLed and restarted, PostgreSQL a black hole, a node partitioned
# from Redis (kernel packet drops by iptables as root). Ends with one `chaos audit:` line:
# faults, acked, delivered, lost, duplicated, reordered, archived rows. CI runs one round
# (about 35 s) in ./scripts/test.
#
#   bench/chaos.sh                  # 19 rounds, about 10 minutes, a random seed (printed)
#   ROUNDS=2 SEED=7 bench/chaos.sh  # replay a run
#
# Needs a PostgreSQL server: E2E_POSTGRES_URL (./scripts/test starts a private one; here the
# default is the machine's, postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-19}"
seed="${SEED:-$RANDOM}"
echo "chaos: ROUNDS=$rounds SEED=$seed"
cargo build -q -p gateway
CHAOS_ROUNDS="$rounds" CHAOS_SEED="$seed" \
  timeout $((600 + rounds * 120)) cargo test -q -p e2e --test e2e chaos:: -- --nocapture 2>&1 |
  grep -E "^chaos|test result|panicked"
