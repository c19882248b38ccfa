#!/usr/bin/env bash
# A seeded fault soak of a fresh 3-node ledgerd cluster (reliability guide S19).
#
#   scripts/soak.sh DURATION [soak flags...]     e.g. scripts/soak.sh 30m, scripts/soak.sh 90s --seed 7
#
# Builds release binaries, then runs `soak` (cluster-tests/src/bin/soak.rs): a baseline phase,
# DURATION of randomly chosen faults (leader and follower SIGKILL, leader isolation, one-way
# and flapping partitions, leader SIGSTOP, slow links, node replacement under a fresh id) under
# an idempotent write load, a clean phase, and every check. The whole output goes to
# target/soak/soak-<time>.log; the last line is the headline. Replay a run with --seed N.
# Exit code: 0 every invariant held, 1 one did not, 2 the run could not be carried out.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ $# -lt 1 || "$1" == -* ]]; then
	echo "usage: scripts/soak.sh DURATION [--seed N] [--writers N] [--clean-phase-secs N] [--snapshot-logs N] [--without-idempotency-key]" >&2
	echo "       DURATION: a number with s, m or h (e.g. 30m)" >&2
	exit 2
fi
DURATION="$1"
shift

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# One package at a time, as cluster.sh builds ledgerd (features unify per invocation).
cargo build --release --locked -p node >&2
cargo build --release --locked -p cluster-tests --bin soak >&2
mkdir -p "$TARGET_DIR/soak"
LOG="$TARGET_DIR/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "soak.sh: $DURATION of faults; full output in $LOG" >&2
set +e
LEDGERD_BIN="$TARGET_DIR/release/ledgerd" "$TARGET_DIR/release/soak" --duration "$DURATION" "$@" 2>&1 | tee "$LOG" | grep -E '^(soak:|fault)' >&2
STATUS=${PIPESTATUS[0]}
set -e
tail -n 1 "$LOG"
exit "$STATUS"
