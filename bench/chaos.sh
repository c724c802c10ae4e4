#!/usr/bin/env bash
# The chaos audit, stretched: three gateway nodes on a durable redis-server with PostgreSQL
# archiving, chat traffic, and on a schedule a node SIGKILLed and restarted, Redis frozen
# (SIGSTOP 5 s x STRETCH), Redis SIGKILLed and restarted, PostgreSQL cut off, one node cut off
# from Redis. Ends with one `chaos audit:` line: acked, delivered, lost, duplicated,
# reordered, archived. CI runs the same test with STRETCH=1 (about 40 s).
#
#   STRETCH=5 bench/chaos.sh        # about 3 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p gateway
CHAOS_SECS="${STRETCH:-5}" cargo test -q -p e2e --test e2e chaos:: -- --nocapture 2>&1 |
  grep -E "^chaos|test result|panicked"
