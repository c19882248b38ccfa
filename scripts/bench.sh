#!/usr/bin/env bash
# The write and query benchmark, optionally side by side with etcd (issue 6).
#
#   scripts/bench.sh [--vs-etcd] [--rounds N] [--quick]
#
# Builds ledgerd (cargo profile production: release with LTO) and loadgen, starts a fresh
# 3-node ledgerd cluster on 127.0.0.1 (HTTP 18081-18083, gRPC 19081-19083, data in a temp dir;
# your data/ cluster is not touched), registers 100 agents, and drives load over HTTP spread across all three nodes with `loadgen` (closed loop: each
# client sends a request, waits for the answer, sends the next):
#   - single reports at concurrency 1, 16, 64, 256;
#   - batches of 100 and of 1000 events (4 clients);
#   - activity queries: page 1 and page 2000 of an agent with 100,000 events, public and owner
#     (scripts/bench_query.py, through a follower).
# For each load it prints requests/s, events/s, p50/p99/max latency and the servers' CPU time per
# event (user+system of the three server processes over the run, from /proc), loadgen's own CPU
# time per request (it shares the machine with the servers: one thread, a keep-alive connection
# per client and node, no connection pool), the share of the VM's CPU time the host gave to
# other guests meanwhile (steal, from /proc/stat), and the share nobody used (idle, and I/O wait).
#
# --vs-etcd: installs Debian's etcd-server if missing, starts a 3-member etcd 3.4 on loopback
# (client ports 12379/12479/12579, default durability: fsync on every commit) next to the ledger
# cluster, and right after each single-report run drives puts of 300-byte values through its JSON
# gateway (POST /v3/kv/put) with the same loadgen at the same concurrency (so that the two runs
# of a ratio are close in time), then prints both side by side with the ratio.
# --rounds N: runs each single-report concurrency N times (default 1), alternating ledgerd and
# etcd (ledger, etcd, ledger, etcd, ...), and compares the medians: this VM's speed moves by tens
# of percent within minutes, and one pair of runs can land on a fast stretch for one system and a
# slow one for the other. Every round is in the JSON and in the full table.
# --quick: 5 s runs and 20,000 query events (a smoke run, not for the figures).
#
# The report ends with issue 6's acceptance bar, item by item, as this run measured it.
#
# Everything it starts is stopped on exit. Results: target/bench/bench-<time>.txt and .json, and
# the three nodes' logs as bench-<time>-node<N>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/bench_agents.sh
source scripts/bench_agents.sh

VS_ETCD=no
DURATION=10
WARMUP=2
QUERY_EVENTS=100000
ROUNDS=1
while [[ $# -gt 0 ]]; do
	arg="$1"
	shift
	case "$arg" in
	--vs-etcd) VS_ETCD=yes ;;
	--rounds)
		ROUNDS="${1:-}"
		shift || true
		if ! [[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]]; then
			echo "bench.sh: --rounds needs a whole number from 1 to 99" >&2
			exit 2
		fi
		;;
	--quick)
		DURATION=5
		WARMUP=1
		QUERY_EVENTS=20000
		;;
	-h | --help)
		sed -n '2,34p' "$0"
		exit 0
		;;
	*)
		echo "bench.sh: unknown argument $arg (try --help)" >&2
		exit 2
		;;
	esac
done

CONCURRENCIES=(1 16 64 256)
BATCH_CLIENTS=4
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT_DIR="$TARGET_DIR/bench"
mkdir -p "$OUT_DIR"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
REPORT="$OUT_DIR/bench-$STAMP.txt"
RESULTS="$OUT_DIR/bench-$STAMP.json"
WORK="$(mktemp -d /tmp/asn-bench.XXXXXX)"
export LEDGER_DATA_DIR="$WORK/ledger"
export LEDGER_HTTP_PORT_BASE=18081
export LEDGER_GRPC_PORT_BASE=19081
LEDGER_URLS=(http://127.0.0.1:18081 http://127.0.0.1:18082 http://127.0.0.1:18083)
ETCD_URLS=(http://127.0.0.1:12379 http://127.0.0.1:12479 http://127.0.0.1:12579)
ETCD_PIDS=()
ROUND=1

say() { echo "bench.sh: $*" >&2; }

cleanup() {
	scripts/cluster.sh down >/dev/null 2>&1 || true
	# The nodes' logs go with the results: they tell when snapshots were built (a stall in a run).
	for id in 1 2 3; do
		cp "$LEDGER_DATA_DIR/n$id/ledgerd.log" "$OUT_DIR/bench-$STAMP-node$id.log" 2>/dev/null || true
	done
	for pid in "${ETCD_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

say "building binaries (profile production: release with LTO, what operators deploy)"
# Built one package at a time, as cluster.sh builds ledgerd (features unify per invocation).
export LEDGER_PROFILE=production
cargo build --profile production --locked -p node >&2
cargo build --release --locked -p cluster-tests --bin loadgen >&2
LOADGEN="$TARGET_DIR/release/loadgen"

# Sum of user+system CPU seconds of the given pids.
cpu_seconds() {
	python3 - "$@" <<'EOF'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total += int(fields[11]) + int(fields[12])
print(total / tick)
EOF
}

# run LABEL PIDS... -- LOADGEN-ARGS...: one loadgen run; appends a JSON line to $RESULTS.
run() {
	local label="$1"
	shift
	local pids=()
	while [[ "$1" != -- ]]; do
		pids+=("$1")
		shift
	done
	shift
	local before after out stat_before stat_after
	before="$(cpu_seconds "${pids[@]}")"
	stat_before="$(head -n 1 /proc/stat)"
	out="$("$LOADGEN" --duration-secs "$DURATION" --warmup-secs "$WARMUP" "$@" | sed -n 1p)"
	stat_after="$(head -n 1 /proc/stat)"
	after="$(cpu_seconds "${pids[@]}")"
	python3 - "$label" "$out" "$before" "$after" "$((DURATION + WARMUP))" "$stat_before" "$stat_after" "$ROUND" >>"$RESULTS" <<'EOF'
import json, sys
label, out, before, after, secs = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
events = out["events_per_s"] * secs
out["label"] = label
out["round"] = int(sys.argv[8])
out["cpu_us_per_event"] = round((after - before) / events * 1e6, 1) if events else None
# The share of this VM's CPU time its host gave to others during the run (the `steal` column
# of /proc/stat): runs with much steal are slower for reasons outside both systems.
old, new = ([int(x) for x in line.split()[1:9]] for line in sys.argv[6:8])
delta = [b - a for a, b in zip(old, new)]
def share(column):
    """The share of the machine's CPU time in one /proc/stat column during the run, in %."""
    return round(100 * delta[column] / sum(delta), 1) if sum(delta) else None
out["host_steal_pct"] = share(7)
# The share of the machine nobody used (idle, and idle waiting for the disk): a system that
# leaves much of it is bound by its waits, not by its CPU.
out["host_idle_pct"] = share(3)
out["host_iowait_pct"] = share(4)
print(json.dumps(out))
EOF
	tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("  %-28s %3s %10.0f events/s  p50 %7.2f ms  p99 %7.2f ms  max %8.2f ms  errors %d  cpu %s us/event  steal %s%%  idle %s%%  iowait %s%%"
      % (r["label"], "#%d" % r["round"], r["events_per_s"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["errors"], r["cpu_us_per_event"], r["host_steal_pct"], r["host_idle_pct"], r["host_iowait_pct"]))' >&2
}

ledger_pids() {
	local id
	for id in 1 2 3; do
		cat "$LEDGER_DATA_DIR/n$id/ledgerd.pid"
	done
}

say "starting a fresh 3-node ledgerd cluster in $LEDGER_DATA_DIR"
scripts/cluster.sh up >/dev/null
ADMIN="$(cat "$LEDGER_DATA_DIR/admin.key")"
mapfile -t PIDS < <(ledger_pids)
URL_ARGS=()
for url in "${LEDGER_URLS[@]}"; do URL_ARGS+=(--url "$url"); done

# One registration, reused by every run.
ASN_ARGS=()
say "registering 100 agents"
register_agents "${LEDGER_URLS[0]}" "$ADMIN" 100

if [[ "$VS_ETCD" == yes ]]; then
	if ! command -v etcd >/dev/null; then
		say "installing Debian's etcd-server"
		DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2
	fi
	say "starting a 3-member etcd ($(etcd --version | head -n 1))"
	cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:12480,e3=http://127.0.0.1:12580"
	for i in 1 2 3; do
		client=$((12279 + i * 100))
		peer=$((client + 1))
		etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
			--listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
			--listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
			--initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token asn-bench \
			--log-level error >"$WORK/etcd-e$i.log" 2>&1 &
		ETCD_PIDS+=($!)
	done
	for url in "${ETCD_URLS[@]}"; do
		for _ in $(seq 1 100); do
			if curl -sf "$url/health" | grep -q '"true"'; then break; fi
			sleep 0.2
		done
		curl -sf "$url/health" | grep -q '"true"' || {
			say "etcd at $url is not healthy"
			exit 1
		}
	done
	ETCD_ARGS=()
	for url in "${ETCD_URLS[@]}"; do ETCD_ARGS+=(--url "$url"); done
fi

# Each concurrency runs against ledgerd and then at once against etcd, so that the two runs of a
# ratio are minutes apart at most: this VM's speed drifts by 20-30% over a quarter of an hour, and
# with all ledger runs first and all etcd runs last, the drift went into the ratios. The cluster
# not under load idles meanwhile (heartbeats only).
say "single reports (each concurrency against ledgerd, then etcd; $ROUNDS round(s))"
for c in "${CONCURRENCIES[@]}"; do
	for ROUND in $(seq 1 "$ROUNDS"); do
		run "ledger report c=$c" "${PIDS[@]}" -- "${URL_ARGS[@]}" --key "$ADMIN" "${ASN_ARGS[@]}" --concurrency "$c"
		if [[ "$VS_ETCD" == yes ]]; then
			run "etcd put c=$c" "${ETCD_PIDS[@]}" -- "${ETCD_ARGS[@]}" --target etcd --value-bytes 300 --concurrency "$c"
		fi
	done
done
ROUND=1
say "ledger: batches"
for size in 100 1000; do
	run "ledger batch of $size c=$BATCH_CLIENTS" "${PIDS[@]}" -- "${URL_ARGS[@]}" --key "$ADMIN" "${ASN_ARGS[@]}" \
		--concurrency "$BATCH_CLIENTS" --batch "$size" --request-timeout-ms 30000
done
say "ledger: activity queries ($QUERY_EVENTS events for one agent)"
python3 scripts/bench_query.py --url "${LEDGER_URLS[1]}" --admin-key-file "$LEDGER_DATA_DIR/admin.key" \
	--events "$QUERY_EVENTS" --page 2000 --requests 200 --json | tee "$WORK/query.txt" >&2
tail -n 1 "$WORK/query.txt" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["label"]="ledger queries"; print(json.dumps(d))' >>"$RESULTS"
# Both clusters are stopped by `cleanup` on exit.

python3 - "$RESULTS" "$VS_ETCD" "$ROUNDS" <<'EOF' | tee "$REPORT"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
vs_etcd, rounds = sys.argv[2] == "yes", int(sys.argv[3])
runs = {}
for r in rows:
    runs.setdefault(r["label"], []).append(r)
def median(label, key):
    values = [r[key] for r in runs.get(label, [])]
    return statistics.median(values) if values else None
print(f"bench.sh results ({sys.argv[1]})")
print()
print("| load | round | events/s | p50 ms | p99 ms | max ms | errors | server CPU µs/event | loadgen CPU µs/request | host steal % | idle % | I/O wait % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
# The runs alternate between ledgerd and etcd; the table lists ledgerd's first.
for r in sorted(rows, key=lambda r: r["label"].startswith("etcd")):
    if "events_per_s" in r:
        print(f"| {r['label']} | {r.get('round', 1)} | {r['events_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} | {r['errors']} | {r['cpu_us_per_event']} | {r.get('client_cpu_us_per_request')} | {r.get('host_steal_pct')} | {r.get('host_idle_pct')} | {r.get('host_iowait_pct')} |")
q = runs.get("ledger queries", [None])[0]
if q:
    print()
    print(f"activity queries (load ran at {q['load_events_per_s']:,.0f} events/s):")
    print("| caller | page | events | total | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for row in q["rows"]:
        print(f"| {row['caller']} | {row['page']} | {row['events']} | {row['total']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['max_ms']:.2f} |")
ratios = {}
if vs_etcd:
    print()
    if rounds > 1:
        print(f"Medians of {rounds} rounds (events/s and p99 of each system; the ratio is of the medians):")
        print()
    print("| concurrency | ledger reports/s | etcd puts/s | ratio | ledger p99 ms | etcd p99 ms |" + (" ratio of each round |" if rounds > 1 else ""))
    print("|---|---|---|---|---|---|" + ("---|" if rounds > 1 else ""))
    for c in (1, 16, 64, 256):
        a, b = f"ledger report c={c}", f"etcd put c={c}"
        la, eb = median(a, "events_per_s"), median(b, "events_per_s")
        if la is None or eb is None:
            continue
        ratio = la / eb if eb else float("inf")
        ratios[c] = (ratio, median(a, "p99_ms"), median(b, "p99_ms"))
        each = ""
        if rounds > 1:
            pairs = zip(runs[a], runs[b])
            each = " " + ", ".join(f"{x['events_per_s'] / y['events_per_s']:.2f}x" if y["events_per_s"] else "inf" for x, y in pairs) + " |"
        print(f"| {c} | {la:,.0f} | {eb:,.0f} | {ratio:.2f}x | {ratios[c][1]:.2f} | {ratios[c][2]:.2f} |" + each)
# Issue 6's acceptance bar, item by item, as this run measured it.
print()
print("Against issue 6's acceptance bar:")
def item(ok, text):
    print(f"- [{'met' if ok else 'NOT met'}] {text}")
if vs_etcd:
    wanted = {1: 1.0, 64: 2.0, 256: 1.5}
    for c, want in wanted.items():
        if c in ratios:
            item(ratios[c][0] >= want, f"single reports at {c} client(s): {ratios[c][0]:.2f}x etcd (at least {want}x)")
    for c, (_, lp, ep) in sorted(ratios.items()):
        item(lp <= ep, f"p99 at {c} client(s): {lp:.2f} ms against etcd's {ep:.2f} ms (no worse)")
else:
    print("- (the ratios to etcd need --vs-etcd)")
errors = sum(r.get("errors", 0) for r in rows if r["label"].startswith("ledger") and "errors" in r)
item(errors == 0, f"errors in the ledger's runs: {errors}")
batch_label = next((label for label in runs if label.startswith("ledger batch of 1000 ")), None)
batch = median(batch_label, "events_per_s") if batch_label else None
if batch is not None:
    item(batch >= 20000, f"batches of 1000: {batch:,.0f} events/s (at least 20,000)")
if q:
    by_page = {(row["caller"], row["page"]): row["p50_ms"] for row in q["rows"]}
    for caller in sorted({row["caller"] for row in q["rows"]}):
        first, deep = by_page.get((caller, 1)), by_page.get((caller, 2000))
        held = next((row["events"] for row in q["rows"] if row["caller"] == caller and row["page"] == 2000), 0)
        if first and deep:
            item(deep <= 2 * first, f"{caller} page 2000 ({held} events) p50 {deep:.2f} ms against page 1 {first:.2f} ms (within 2x)")
steal = max((r.get("host_steal_pct") or 0) for r in rows if "events_per_s" in r)
print(f"- highest host steal on any line: {steal}% (the bar asks for an idle machine)")
EOF
say "report: $REPORT"
