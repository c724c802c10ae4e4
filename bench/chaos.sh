#!/usr/bin/env bash
# The chaos audit, long: three gateway nodes on a durable redis-server with PostgreSQL
# archiving, chat traffic, and round after round of faults in an order drawn from a seed: a
# node SIGKILLed (its clients dial it while it is dead) and restarted, Redis frozen while a
# node is killed, Redis SIGKILLed and restarted, PostgreSQL a black hole, a node partitioned
# from Redis (kernel packet drops by iptables as root). Each fault lasts until it has shown
# its effect; the next comes once publishes are acknowledged again. Ends with one
# `chaos audit:` line: faults, acked, delivered, lost, duplicated, reordered, archived rows.
# CI runs one round (about 15 s) in ./scripts/test.
#
#   bench/chaos.sh                     # rounds for 10 minutes, a random seed (printed)
#   MINUTES=2 SEED=7 bench/chaos.sh    # replay a run's order for 2 minutes
#
# Needs a PostgreSQL server: E2E_POSTGRES_URL (./scripts/test starts a private one; here the
# default is the machine's, postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${MINUTES:-10}"
seed="${SEED:-$RANDOM}"
echo "chaos: MINUTES=$minutes SEED=$seed"
cargo build -q -p gateway
CHAOS_SECS=$((minutes * 60)) CHAOS_SEED="$seed" \
  timeout $((900 + minutes * 60)) cargo test -q -p e2e --test e2e chaos:: -- --nocapture 2>&1 |
  grep --line-buffered -E "^chaos|test result|panicked"
