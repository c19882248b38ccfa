#!/usr/bin/env python3
"""Activity-query latency on deep history: page 1 versus page N of one agent, public and owner.

Against a running cluster (scripts/cluster.sh up): creates an operator, a read+write key and an
agent, loads EVENTS events for it through the batch endpoint (1000 a request), then times
REQUESTS sequential GETs of each page over one keep-alive connection, and prints p50/p99/max.

    scripts/bench_query.py [--events 100000] [--page 2000] [--requests 200] [--url http://127.0.0.1:8082]
"""

import argparse
import http.client
import json
import os
import time
import urllib.parse


def request(conn, method, path, key=None, body=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:300]!r}")
    return json.loads(data)


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8082")
    parser.add_argument("--admin-key-file", default=os.environ.get("LEDGER_DATA_DIR", "data") + "/admin.key")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=2000)
    parser.add_argument("--per-page", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()

    url = urllib.parse.urlparse(args.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    admin = open(args.admin_key_file).read().strip()

    operator = request(conn, "POST", "/api/v1/operators", admin, {"name": "bench-query"})
    key = request(conn, "POST", "/api/v1/keys", admin,
                  {"operator_id": operator["id"], "name": "bench", "permissions": ["write", "read"]})["key"]
    asn = request(conn, "POST", "/api/v1/agents", key, {"name": "deep-history"})["asn"]

    started = time.monotonic()
    loaded = 0
    while loaded < args.events:
        n = min(1000, args.events - loaded)
        events = [{"asn": asn, "event_type": "task_completed" if i % 4 else "task_failed",
                   "metadata": {"i": loaded + i}} for i in range(n)]
        request(conn, "POST", "/api/v1/activity/report/batch", key, {"events": events})
        loaded += n
    load_s = time.monotonic() - started
    print(f"loaded {loaded} events for {asn} in {load_s:.1f} s ({loaded / load_s:.0f} events/s through {args.url})")

    rows = []
    for who, who_key in (("public", None), ("owner", key)):
        for page in (1, args.page):
            path = f"/api/v1/agents/{asn}/activity?page={page}&per_page={args.per_page}"
            first = request(conn, "GET", path, who_key)
            samples = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                request(conn, "GET", path, who_key)
                samples.append((time.perf_counter() - t0) * 1000)
            rows.append((who, page, len(first["data"]), first["pagination"]["total"],
                         percentile(samples, 0.5), percentile(samples, 0.99), max(samples)))
    print(f"{'caller':<8} {'page':>6} {'events':>6} {'total':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for who, page, count, total, p50, p99, worst in rows:
        print(f"{who:<8} {page:>6} {count:>6} {total:>7} {p50:>8.2f} {p99:>8.2f} {worst:>8.2f}")
    if args.json:
        print(json.dumps({"load_events_per_s": round(loaded / load_s, 1), "rows": [
            {"caller": who, "page": page, "events": count, "total": total,
             "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "max_ms": round(worst, 3)}
            for who, page, count, total, p50, p99, worst in rows]}))


if __name__ == "__main__":
    main()
