#!/usr/bin/env bash
# A/B of single-report throughput between another checkout and this one:
#
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p node)
#   scripts/bench_ab.sh /tmp/old [ROUNDS]
#
# Each round starts a fresh 3-node cluster (scripts/cluster.sh, ports 18381-18383) per
# checkout, drives it with this checkout's loadgen over the three nodes with single reports at
# concurrency 64 and 256 and batches of 1000 from 4 clients (8 s after 2 s of warm-up each), and
# prints events/s, p99 and the servers' CPU per event.
# Run it on an idle machine; alternate rounds absorb some drift.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OLD="$(cd "${1:?usage: scripts/bench_ab.sh OLD_CHECKOUT [ROUNDS]}" && pwd)"
ROUNDS="${2:-2}"
(cd "$ROOT" && cargo build --release --locked -p node -p cluster-tests --bin loadgen >&2)
LOADGEN="$ROOT/target/release/loadgen"
cpu() {
	python3 - "$@" <<'PY'
import os, sys
total = 0.0
for pid in sys.argv[1:]:
    fields = open(f"/proc/{pid}/stat").read().split(")")[-1].split()
    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
print(total)
PY
}
for round in $(seq 1 "$ROUNDS"); do
	for version in old new; do
		if [[ $version == old ]]; then repo="$OLD"; else repo="$ROOT"; fi
		data="$(mktemp -d /tmp/bench-ab-XXXXXX)"
		env=(CARGO_TARGET_DIR="$repo/target" LEDGER_DATA_DIR="$data" LEDGER_HTTP_PORT_BASE=18381 LEDGER_GRPC_PORT_BASE=19381)
		(cd "$repo" && env "${env[@]}" scripts/cluster.sh up >/dev/null 2>&1)
		pids=$(for i in 1 2 3; do cat "$data/n$i/ledgerd.pid"; done)
		for load in "--concurrency 64" "--concurrency 256" "--concurrency 4 --batch 1000"; do
			before=$(cpu $pids)
			# shellcheck disable=SC2086 # $load is several arguments
			out=$("$LOADGEN" --url http://127.0.0.1:18381 --url http://127.0.0.1:18382 --url http://127.0.0.1:18383 \
				--key "$(cat "$data/admin.key")" $load --duration-secs 8 --warmup-secs 2 2>/dev/null | sed -n 1p)
			after=$(cpu $pids)
			python3 -c "import json,sys; o=json.loads(sys.argv[1]); e=o['events_per_s']*10
print('%s round %s %s: %.0f events/s, p99 %.2f ms, server CPU %.0f us/event' % ('$version', $round, '$load', o['events_per_s'], o['p99_ms'], ($after-$before)/e*1e6))" "$out"
		done
		(cd "$repo" && env "${env[@]}" scripts/cluster.sh down >/dev/null 2>&1)
		rm -rf "$data"
	done
done
