#!/usr/bin/env bash
# schemathesis against a live single-node ledgerd: every operation of the OpenAPI document
# (GET /api/v1/openapi.json) is called with generated valid and invalid requests; any 5xx, any
# status or content type the document does not list, or any body that does not match its schema
# fails the run (exit 1). docs/API.md says what it covers and what it found.
#
#   scripts/schemathesis.sh            # CI runs this after the tests
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 60 per operation and phase),
# SCHEMATHESIS_SEED (default 1, reproducible), CARGO_TARGET_DIR, SCHEMATHESIS_VENV (where the
# pinned schemathesis is installed once and reused by later runs and clones; default
# ~/.cache/asn-ledger/schemathesis-<version>).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
TARGET_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
VENV="$(realpath -m "${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/asn-ledger/schemathesis-$SCHEMATHESIS_VERSION}")"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-60}"
SEED="${SCHEMATHESIS_SEED:-1}"
say() { echo "schemathesis.sh: $*" >&2; }

# 1. The pinned schemathesis, in a venv kept between runs.
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
	say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
	rm -rf "$VENV"
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# 2. ledgerd (debug): the one `cargo test --workspace` built, if no source is newer; else a
#    build (`cargo build -p node` after `cargo test --workspace` may resolve other features and
#    rebuild much of the tree, so it is avoided when the binary is fresh).
BIN="$TARGET_DIR/debug/ledgerd"
if [[ ! -x "$BIN" ]] || [[ -n "$(find node api raft-store proto verifier Cargo.lock -newer "$BIN" -print -quit)" ]]; then
	say "building ledgerd (debug)"
	cargo build --quiet --locked -p node
fi

# 3. A fresh single-node cluster on free loopback ports.
work="$(mktemp -d)"
read -r HTTP_PORT GRPC_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
BASE="http://127.0.0.1:$HTTP_PORT"
pid=""
cleanup() {
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
# ledgerd reads LEDGER_* variables as flags: do not let this shell's leak in.
env $(env | grep -o '^LEDGER_[A-Z_]*' | sed 's/^/-u /') \
	"$BIN" --id 1 --data-dir "$work/n1" --bootstrap \
	--http-addr "127.0.0.1:$HTTP_PORT" --grpc-addr "127.0.0.1:$GRPC_PORT" \
	>"$work/ledgerd.log" 2>&1 &
pid=$!
deadline=$((SECONDS + 60))
until curl -sf "$BASE/readyz" >/dev/null 2>&1; do
	if ((SECONDS > deadline)) || ! kill -0 "$pid" 2>/dev/null; then
		say "ledgerd did not become ready"; tail -n 30 "$work/ledgerd.log" >&2; exit 1
	fi
	sleep 0.2
done

# 4. An operator, an admin key of our own, an operator key and two agents (one to be
#    deactivated by the tests, one that stays active so reports can succeed).
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
BOOT="Authorization: Bearer $(cat "$work/n1/admin.key")"
post() { curl -sf -X POST "$BASE$1" -H "$2" -H 'Content-Type: application/json' -d "$3"; }
OP=$(post /api/v1/operators "$BOOT" '{"name":"schemathesis"}' | json id)
ADMIN_KEY=$(post /api/v1/keys "$BOOT" '{"name":"fuzz-admin","permissions":["admin"]}' | json key)
OPERATOR_KEY=$(post /api/v1/keys "$BOOT" \
	"{\"operator_id\":\"$OP\",\"name\":\"fuzz-operator\",\"permissions\":[\"write\",\"read\"]}" | json key)
ASN=$(post /api/v1/agents "Authorization: Bearer $OPERATOR_KEY" '{"name":"fuzz-agent"}' | json asn)
ASN2=$(post /api/v1/agents "Authorization: Bearer $OPERATOR_KEY" '{"name":"fuzz-agent-2"}' | json asn)
post /api/v1/activity/report "Authorization: Bearer $OPERATOR_KEY" \
	"{\"asn\":\"$ASN\",\"event_type\":\"provisioned\"}" >/dev/null
say "node on $BASE, operator $OP, agents $ASN and $ASN2"

# Half of the generated ASNs and operator ids are real ones, so the success answers get checked
# too. (No key ids: run 1 would revoke its own key.)
cat >"$work/schemathesis.toml" <<EOF
[dictionaries.asns]
values = ["$ASN", "$ASN2"]

[dictionaries.operators]
values = ["$OP"]

[parameters]
"path.asn" = { dictionary = "asns", probability = 0.5 }
"body.asn" = { dictionary = "asns", probability = 0.5 }
"body.events[*].asn" = { dictionary = "asns", probability = 0.5 }
"path.id" = { dictionary = "operators", probability = 0.5 }
"body.owner_id" = { dictionary = "operators", probability = 0.5 }
"body.operator_id" = { dictionary = "operators", probability = 0.5 }
EOF

CHECKS="${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance}"
PHASES="${SCHEMATHESIS_PHASES:-examples,coverage,fuzzing}"
# Run from the scratch directory: schemathesis keeps a cache (.schemathesis/) where it runs.
run() {
	(cd "$work" && "$VENV/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$BASE/api/v1/openapi.json" \
		--checks "$CHECKS" --max-examples "$MAX_EXAMPLES" --seed "$SEED" \
		--phases "$PHASES" --workers 1 --request-timeout 20 \
		--no-color --report junit --report-dir "$TARGET_DIR/schemathesis-report" --report-junit-path "$TARGET_DIR/schemathesis-report/$1.xml" \
		"${@:2}")
}

status=0
# 5a. Everything but the membership changes, as admin (every route, every branch an admin reaches).
say "run 1: every operation but the membership changes, admin key"
run admin -H "Authorization: Bearer $ADMIN_KEY" \
	--exclude-path /api/v1/cluster/nodes --exclude-path '/api/v1/cluster/nodes/{id}' || status=1
# 5b. The same with an operator's key: ownership, 403s and the owner's view of activity.
say "run 2: every operation, an operator's write+read key"
run operator -H "Authorization: Bearer $OPERATOR_KEY" || status=1
# 5c. No key at all: the public reads and every 401.
say "run 3: every operation, no key"
run public || status=1
# The membership changes are left out of run 1 on purpose: as admin they would add random
# addresses to, or remove the only voter of, the node under test. Runs 2 and 3 call them
# (403/401 and validation).

# The success paths were reached too: reports were recorded beyond the one provisioned above.
size=$(curl -sf "$BASE/api/v1/ledger/head?consistency=local" | json size || echo 0)
say "the ledger holds $size events after the runs"
if ((size < 2)); then
	say "no generated report succeeded: the success answers went unchecked"; status=1
fi
if ! kill -0 "$pid" 2>/dev/null; then
	say "ledgerd died during the run"; tail -n 30 "$work/ledgerd.log" >&2; status=1
fi
if grep -q "panicked" "$work/ledgerd.log"; then
	say "ledgerd logged a panic"; grep -m5 -A5 "panicked" "$work/ledgerd.log" >&2; status=1
fi
exit "$status"
