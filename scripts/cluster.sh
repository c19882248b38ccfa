#!/usr/bin/env bash
# A local 3-node ledgerd cluster on 127.0.0.1.
#
#   scripts/cluster.sh up       build (release), start 3 nodes, form the cluster, print URLs and key
#   scripts/cluster.sh down     SIGTERM every node, SIGKILL after 10 s, remove pid files
#   scripts/cluster.sh status   print GET /api/v1/cluster from a live node
#
# Node i (1..3): HTTP 127.0.0.1:$((LEDGER_HTTP_PORT_BASE + i - 1)) (default base 8081),
# gRPC 127.0.0.1:$((LEDGER_GRPC_PORT_BASE + i - 1)) (default base 9081), data dir
# ${LEDGER_DATA_DIR:-data}/n$i with ledgerd.log and ledgerd.pid in it. Node 1 bootstraps the
# cluster on first start; later starts reuse the data (no re-bootstrap). The admin key is copied
# to ${LEDGER_DATA_DIR:-data}/admin.key (mode 0600). LEDGER_PROFILE picks the cargo profile
# ledgerd is built with (default release; scripts/bench.sh uses production; CI uses dev, the
# tests' unoptimised build, which cargo keeps in target/debug).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

NODES=3
HTTP_BASE="${LEDGER_HTTP_PORT_BASE:-8081}"
GRPC_BASE="${LEDGER_GRPC_PORT_BASE:-9081}"
DATA="${LEDGER_DATA_DIR:-data}"
case "$DATA" in
/*) ;;
*) DATA="$ROOT/$DATA" ;;
esac
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in
/*) ;;
*) TARGET_DIR="$ROOT/$TARGET_DIR" ;;
esac
PROFILE="${LEDGER_PROFILE:-release}"
case "$PROFILE" in
dev | test) PROFILE_DIR=debug ;;
*) PROFILE_DIR="$PROFILE" ;;
esac
BIN="$TARGET_DIR/$PROFILE_DIR/ledgerd"
READY_TIMEOUT_S=60
STOP_TIMEOUT_S=10

# The three nodes share this machine's cores: each gets its share of async worker threads, at
# least one, instead of one per core (docs/OPERATIONS.md, "Nodes that share a machine").
WORKER_THREADS=$(($(nproc) / NODES))
if ((WORKER_THREADS < 1)); then WORKER_THREADS=1; fi
# Flags passed to every node; LEDGERD_EXTRA_ARGS comes after them, and a flag given again
# takes its last value (e.g. LEDGERD_EXTRA_ARGS="--worker-threads 2 --heartbeat-ms 100").
NODE_FLAGS=(--heartbeat-ms 250 --election-timeout-min-ms 1500 --election-timeout-max-ms 3000
	--worker-threads "$WORKER_THREADS")

die() {
	echo "cluster.sh: error: $*" >&2
	exit 1
}
say() { echo "cluster.sh: $*" >&2; }

http_port() { echo $((HTTP_BASE + $1 - 1)); }
grpc_port() { echo $((GRPC_BASE + $1 - 1)); }
node_dir() { echo "$DATA/n$1"; }
pid_file() { echo "$DATA/n$1/ledgerd.pid"; }
url() { echo "http://127.0.0.1:$(http_port "$1")"; }

# The pid of node $1 if its pid file names a live ledgerd started on this data dir, else nothing.
our_pid() {
	local file pid cmdline
	file="$(pid_file "$1")"
	[[ -f "$file" ]] || return 0
	pid="$(tr -dc '0-9' <"$file")"
	[[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 0
	cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
	if [[ "$cmdline" == *ledgerd* && "$cmdline" == *"--data-dir $(node_dir "$1") "* ]]; then
		echo "$pid"
	fi
}

# Removes the pid file of node $1 when it does not name our live node.
clean_stale_pid() {
	local file
	file="$(pid_file "$1")"
	if [[ -f "$file" && -z "$(our_pid "$1")" ]]; then
		say "node $1: removing stale pid file (pid $(cat "$file") is not our ledgerd)"
		rm -f "$file"
	fi
}

# Describes who listens on TCP port $1.
port_owner() {
	local owner
	owner="$(ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -1)"
	echo "${owner:-unknown process}"
}

port_in_use() {
	ss -ltnH "sport = :$1" 2>/dev/null | grep -q .
}

# HTTP status of GET $1 (000 when there is no answer).
http_status() {
	curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" || true
}

ready() { [[ "$(http_status "$(url "$1")/readyz")" == 200 ]]; }

# Prints field $2 of the JSON document in $1 (python3 expression on `d`).
json_field() {
	python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"
}

cluster_json() {
	curl -sf -m 5 "$(url "$1")/api/v1/cluster"
}

log_tail() {
	echo "----- $(node_dir "$1")/ledgerd.log (last 30 lines) -----" >&2
	tail -n 30 "$(node_dir "$1")/ledgerd.log" >&2 2>/dev/null || true
}

# Fails when a port of node $1 (which is not running) is taken by something else.
check_ports_free() {
	local id="$1" port
	for port in "$(http_port "$id")" "$(grpc_port "$id")"; do
		if port_in_use "$port"; then
			die "port $port (node $id) is already used by something that is not node $id of \
this cluster ($DATA): $(port_owner "$port"). Stop it (another checkout's cluster? try its \
scripts/cluster.sh down) or choose other ports with LEDGER_HTTP_PORT_BASE/LEDGER_GRPC_PORT_BASE."
		fi
	done
}

start_node() {
	local id="$1" bootstrap="$2" dir log
	dir="$(node_dir "$id")"
	log="$dir/ledgerd.log"
	mkdir -p "$dir"
	check_ports_free "$id"
	local args=(--id "$id" --data-dir "$dir" --http-addr "127.0.0.1:$(http_port "$id")"
		--grpc-addr "127.0.0.1:$(grpc_port "$id")" "${NODE_FLAGS[@]}")
	if [[ "$bootstrap" == yes ]]; then
		args+=(--bootstrap)
	fi
	# shellcheck disable=SC2206 # word splitting of the extra args is intended
	args+=(${LEDGERD_EXTRA_ARGS:-})
	# ledgerd reads LEDGER_* variables as flags: do not let this shell's variables leak in
	# (LEDGER_LOG, the log filter, is kept).
	local unset_args=() name
	for name in $(compgen -e); do
		if [[ "$name" == LEDGER_* && "$name" != LEDGER_LOG ]]; then
			unset_args+=(-u "$name")
		fi
	done
	echo "=== cluster.sh: starting node $id at $(date -u +%FT%TZ): $BIN ${args[*]}" >>"$log"
	env "${unset_args[@]}" setsid "$BIN" "${args[@]}" </dev/null >>"$log" 2>&1 &
	echo $! >"$(pid_file "$id")"
	say "node $id: started (pid $!), log $log"
}

# Waits until node $1 answers /livez (its HTTP server is up; it may not be a member yet).
wait_live() {
	local id="$1" deadline=$((SECONDS + READY_TIMEOUT_S))
	until [[ "$(http_status "$(url "$id")/livez")" == 200 ]]; do
		if [[ -z "$(our_pid "$id")" ]]; then
			log_tail "$id"
			die "node $id exited while starting"
		fi
		if ((SECONDS >= deadline)); then
			log_tail "$id"
			die "node $id does not answer /livez after ${READY_TIMEOUT_S} s"
		fi
		sleep 0.2
	done
}

wait_ready() {
	local id="$1" deadline=$((SECONDS + READY_TIMEOUT_S))
	until ready "$id"; do
		if [[ -z "$(our_pid "$id")" ]]; then
			log_tail "$id"
			die "node $id exited while starting"
		fi
		if ((SECONDS >= deadline)); then
			log_tail "$id"
			die "node $id not ready after ${READY_TIMEOUT_S} s"
		fi
		sleep 0.2
	done
}

is_member() {
	local id="$1" json
	json="$(cluster_json 1)" || return 1
	[[ "$(json_field "$json" "$id in d['voters'] or $id in d['learners']")" == True ]]
}

add_node() {
	local id="$1" key="$2" body response status
	body="{\"id\":$id,\"grpc_addr\":\"127.0.0.1:$(grpc_port "$id")\","
	body+="\"http_addr\":\"127.0.0.1:$(http_port "$id")\"}"
	response="$(mktemp)"
	status="$(curl -s -m 60 -o "$response" -w '%{http_code}' -X POST \
		-H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
		--data "$body" "$(url 1)/api/v1/cluster/nodes" || true)"
	if [[ "$status" != 201 ]]; then
		local text
		text="$(cat "$response")"
		rm -f "$response"
		die "adding node $id answered HTTP $status: $text"
	fi
	rm -f "$response"
	say "node $id: added to the cluster"
}

healthy() {
	local id json
	for id in $(seq 1 "$NODES"); do
		[[ -n "$(our_pid "$id")" ]] || return 1
		ready "$id" || return 1
	done
	json="$(cluster_json 1)" || return 1
	local expr="sorted(d['voters']) == list(range(1, $NODES + 1)) and d['leader_id'] is not None"
	[[ "$(json_field "$json" "$expr")" == True ]]
}

print_summary() {
	local json leader id
	json="$(cluster_json 1)"
	leader="$(json_field "$json" "d['leader_id']")"
	for id in $(seq 1 "$NODES"); do
		echo "node $id: $(url "$id")  (gRPC 127.0.0.1:$(grpc_port "$id"), pid $(our_pid "$id")," \
			"data $(node_dir "$id"))"
	done
	echo "leader: node $leader ($(url "$leader"))"
	echo "admin key: $(cat "$DATA/admin.key")  (in $DATA/admin.key)"
}

cmd_up() {
	mkdir -p "$DATA"
	local id
	for id in $(seq 1 "$NODES"); do
		clean_stale_pid "$id"
	done
	if healthy; then
		say "cluster already running and healthy"
		print_summary
		return 0
	fi
	for id in $(seq 1 "$NODES"); do
		if [[ -z "$(our_pid "$id")" ]]; then
			check_ports_free "$id"
		fi
	done
	say "building ledgerd ($PROFILE)"
	cargo build --profile "$PROFILE" -p node >&2
	[[ -x "$BIN" ]] || die "$BIN is missing after the build"

	local existing=no
	[[ -s "$(node_dir 1)/admin.key" ]] && existing=yes
	if [[ -z "$(our_pid 1)" ]]; then
		if [[ "$existing" == yes ]]; then
			start_node 1 no
		else
			start_node 1 yes
		fi
	fi
	if [[ "$existing" == yes ]]; then
		# A cluster that ran before: node 1 is ready only once a majority elects a leader, so
		# every stopped node starts now, before anyone waits for readiness.
		for id in $(seq 2 "$NODES"); do
			if [[ -z "$(our_pid "$id")" ]]; then
				start_node "$id" no
			fi
		done
	fi
	wait_ready 1
	local key_file
	key_file="$(node_dir 1)/admin.key"
	[[ -s "$key_file" ]] || die "$key_file is missing or empty after node 1 became ready"
	local key
	key="$(tr -d '[:space:]' <"$key_file")"

	for id in $(seq 2 "$NODES"); do
		if [[ -z "$(our_pid "$id")" ]]; then
			start_node "$id" no
		fi
	done
	for id in $(seq 2 "$NODES"); do
		if is_member "$id"; then
			say "node $id: already a member"
		else
			wait_live "$id"
			add_node "$id" "$key"
		fi
	done
	for id in $(seq 1 "$NODES"); do
		wait_ready "$id"
	done
	local deadline=$((SECONDS + READY_TIMEOUT_S))
	until healthy; do
		((SECONDS < deadline)) ||
			die "the cluster did not report $NODES voters and a leader within ${READY_TIMEOUT_S} s"
		sleep 0.2
	done
	install -m 600 "$key_file" "$DATA/admin.key"
	print_summary
}

cmd_down() {
	local id pid pids=()
	for id in $(seq 1 "$NODES"); do
		pid="$(our_pid "$id")"
		if [[ -n "$pid" ]]; then
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$id:$pid")
			say "node $id: SIGTERM sent to pid $pid"
		else
			clean_stale_pid "$id"
		fi
	done
	local deadline=$((SECONDS + STOP_TIMEOUT_S)) entry alive
	while :; do
		alive=0
		for entry in "${pids[@]}"; do
			if kill -0 "${entry#*:}" 2>/dev/null; then
				alive=1
			fi
		done
		((alive)) || break
		if ((SECONDS >= deadline)); then
			for entry in "${pids[@]}"; do
				if kill -0 "${entry#*:}" 2>/dev/null; then
					say "node ${entry%%:*}: still running after ${STOP_TIMEOUT_S} s, SIGKILL"
					kill -KILL "${entry#*:}" 2>/dev/null || true
				fi
			done
			break
		fi
		sleep 0.1
	done
	for id in $(seq 1 "$NODES"); do
		rm -f "$(pid_file "$id")"
	done
	say "stopped"
}

cmd_status() {
	local id json=""
	for id in $(seq 1 "$NODES"); do
		local pid
		pid="$(our_pid "$id")"
		echo "node $id: $(url "$id") pid ${pid:-none} readyz $(http_status "$(url "$id")/readyz")" >&2
	done
	for id in $(seq 1 "$NODES"); do
		if json="$(cluster_json "$id")"; then
			if command -v jq >/dev/null; then
				echo "$json" | jq .
			else
				echo "$json" | python3 -m json.tool
			fi
			return 0
		fi
	done
	die "no node answers GET /api/v1/cluster"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
	echo "usage: $0 up|down|status" >&2
	exit 2
	;;
esac
