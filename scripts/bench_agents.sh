# Sourced by scripts/bench.sh and scripts/bench_snapshot.sh (not run on its own).
#
# register_agents URL ADMIN_KEY COUNT: registers an operator "bench" and COUNT agents owned by
# it through the node at URL, and appends `--asn <ASN>` for each agent to the array ASN_ARGS
# (loadgen's arguments).
register_agents() {
	local url="$1" admin="$2" count="$3" operator owner agent n
	operator="$(curl -sf -X POST "$url/api/v1/operators" -H "Authorization: Bearer $admin" -d '{"name":"bench"}')"
	owner="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$operator")"
	for n in $(seq 1 "$count"); do
		agent="$(curl -sf -X POST "$url/api/v1/agents" -H "Authorization: Bearer $admin" \
			-d "{\"name\":\"bench-$n\",\"owner_id\":\"$owner\"}")"
		ASN_ARGS+=(--asn "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["asn"])' "$agent")")
	done
}
