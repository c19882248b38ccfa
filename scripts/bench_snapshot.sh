#!/usr/bin/env bash
# What a snapshot costs the write path: batches of 1000 through a window in which the nodes
# build a snapshot, one at a time (node/src/snapshots.rs).
#
#   scripts/bench_snapshot.sh [--preload-secs N] [--window-secs N] [--snapshot-log-bytes N]
#
# Builds ledgerd (cargo profile production) and loadgen, starts a fresh 3-node cluster on
# 127.0.0.1 (HTTP 18081-18083, gRPC 19081-19083, data in a temp dir) whose nodes snapshot only
# after --snapshot-log-bytes of Raft log (default 200,000,000; the entry count never triggers
# one), registers 100 agents, then drives batches of 1000 events with 4 clients: first for
# --preload-secs (default 15; at about 30,000 events/s this writes most of the log the
# snapshot needs), then for --window-secs (default 45), in which the log passes the threshold
# and the three nodes build their snapshot (of 360-600 MB here: a node that waits for its turn
# builds a larger one) in turn while the batches go on.
# Prints the window's events/s, p99 and max latency, the servers' CPU per event, each node's
# `built snapshot` log line (size in bytes, build time in ms) and the AppendEntries timeouts
# the nodes logged. Compare with scripts/bench.sh's "ledger batch of 1000" line, which usually
# runs without a snapshot.
#
# Everything it starts is stopped on exit; the nodes' logs are kept as
# target/bench/snapshot-<time>-node<N>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/bench_agents.sh
source scripts/bench_agents.sh

PRELOAD=15
WINDOW=45
SNAPSHOT_LOG_BYTES=200000000
while [[ $# -gt 0 ]]; do
	arg="$1"
	shift
	case "$arg" in
	--preload-secs | --window-secs | --snapshot-log-bytes)
		value="${1:-}"
		shift || true
		if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
			echo "bench_snapshot.sh: $arg needs a positive whole number" >&2
			exit 2
		fi
		case "$arg" in
		--preload-secs) PRELOAD="$value" ;;
		--window-secs) WINDOW="$value" ;;
		--snapshot-log-bytes) SNAPSHOT_LOG_BYTES="$value" ;;
		esac
		;;
	-h | --help)
		sed -n '2,21p' "$0"
		exit 0
		;;
	*)
		echo "bench_snapshot.sh: unknown argument $arg (try --help)" >&2
		exit 2
		;;
	esac
done

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT_DIR="$TARGET_DIR/bench"
mkdir -p "$OUT_DIR"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
WORK="$(mktemp -d /tmp/asn-bench-snapshot.XXXXXX)"
export LEDGER_DATA_DIR="$WORK/ledger"
export LEDGER_HTTP_PORT_BASE=18081
export LEDGER_GRPC_PORT_BASE=19081
export LEDGER_PROFILE=production
export LEDGERD_EXTRA_ARGS="--snapshot-logs 1000000000 --snapshot-log-bytes $SNAPSHOT_LOG_BYTES"
URL_ARGS=(--url http://127.0.0.1:18081 --url http://127.0.0.1:18082 --url http://127.0.0.1:18083)

say() { echo "bench_snapshot.sh: $*" >&2; }

cleanup() {
	scripts/cluster.sh down >/dev/null 2>&1 || true
	for id in 1 2 3; do
		cp "$LEDGER_DATA_DIR/n$id/ledgerd.log" "$OUT_DIR/snapshot-$STAMP-node$id.log" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

say "building binaries (profile production)"
cargo build --profile production --locked -p node >&2
cargo build --release --locked -p cluster-tests --bin loadgen >&2
LOADGEN="$TARGET_DIR/release/loadgen"

say "starting a fresh 3-node cluster in $LEDGER_DATA_DIR (snapshots after $SNAPSHOT_LOG_BYTES bytes of log)"
scripts/cluster.sh up >/dev/null
ADMIN="$(cat "$LEDGER_DATA_DIR/admin.key")"
PIDS=()
for id in 1 2 3; do PIDS+=("$(cat "$LEDGER_DATA_DIR/n$id/ledgerd.pid")"); done

say "registering 100 agents"
ASN_ARGS=()
register_agents http://127.0.0.1:18081 "$ADMIN" 100

cpu_ticks() {
	local pid total=0
	for pid in "${PIDS[@]}"; do
		total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
	done
	echo "$total"
}

batches() {
	"$LOADGEN" "${URL_ARGS[@]}" --key "$ADMIN" "${ASN_ARGS[@]}" --concurrency 4 --batch 1000 \
		--request-timeout-ms 30000 --warmup-secs 0 --duration-secs "$1" | sed -n 1p
}

say "preload: batches of 1000 for $PRELOAD s"
batches "$PRELOAD" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("preload: %.0f events/s" % r["events_per_s"])'
before="$(cpu_ticks)"
say "window: batches of 1000 for $WINDOW s, while the nodes build a snapshot in turn"
window="$(batches "$WINDOW")"
after="$(cpu_ticks)"
python3 - "$window" "$((after - before))" "$(getconf CLK_TCK)" "$WINDOW" <<'EOF'
import json, sys
r, ticks, hz, secs = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
events = r["events_per_s"] * secs
cpu = ticks / hz / events * 1e6 if events else float("nan")
print(f"window: {r['events_per_s']:,.0f} events/s  p99 {r['p99_ms']:.0f} ms  max {r['max_ms']:.0f} ms  errors {r['errors']}  server CPU {cpu:.1f} us/event")
EOF
for id in 1 2 3; do
	log="$LEDGER_DATA_DIR/n$id/ledgerd.log"
	built="$(grep -h 'built snapshot' "$log" | sed 's/.*snapshot_id=/snapshot_id=/' | tr '\n' ' ')"
	timeouts="$(grep -c 'timeout after\|no reply within' "$log" || true)"
	echo "node $id: ${built:-no snapshot built}; AppendEntries timeouts logged: $timeouts"
done
