#!/usr/bin/env bash
# Cluster figures (docs/performance.md, "Cluster"): fan-out of one room to SUBS WebSocket
# subscribers, Herald protocol, in four set-ups, each run REPS times on freshly started nodes:
#   cross     3 nodes (--postgres --redis); subscribers on node B, the publisher on node A
#   same      3 nodes (--postgres --redis); subscribers and publisher on node A
#   postgres  1 node with --postgres alone (no Redis)
#   sqlite    1 embedded node (SQLite)
# and two loads: 64 messages in flight (closed loop: throughput) and a fixed RATE (open loop:
# latency from the scheduled send time). Prints a Markdown table of medians [min–max]; raw JSON
# goes to target/bench-cluster/SUBS-subs/. With SUBS=10 the fan-out is cheap and the publish
# path (Redis, PostgreSQL) shows; with 1 000 the fan-out fills the machine.
#   scripts/bench-cluster.sh          # REPS=3 DURATION=5 SUBS=1000 RATE=100 SETUPS="cross same postgres sqlite"
# PostgreSQL and Redis come from scripts/services.sh (started if needed, left running: other
# work on this machine may be using them). Every run gets a fresh PostgreSQL schema and a fresh
# Redis key prefix. Server CPU is the sum over the Herald nodes (not Redis or PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-5}
SUBS=${SUBS:-1000}
RATE=${RATE:-100}
SETUPS=${SETUPS:-"cross same postgres sqlite"}
PORTS=(3401 3402 3403)
out=target/bench-cluster/$SUBS-subs
rm -rf "$out"
mkdir -p "$out/logs"
eval "$(scripts/services.sh start)"
cargo build --release --locked --bin herald >/dev/null
herald=$PWD/target/release/herald
export JWT_SECRET=bench-cluster-secret-of-at-least-32-bytes
token=$("$herald" token --user bench --role admin --ttl 86400)
ulimit -n "$(ulimit -Hn)"
psql_=(env PGOPTIONS=--client-min-messages=warning psql -q -v ON_ERROR_STOP=1 "$POSTGRES_TEST_URL")

pids=()
start_node() {  # start_node PORT LOG ARGS...: one node, its pid appended to $pids
  local port=$1 log=$2; shift 2
  rm -f "/tmp/bench-cluster-$port.db"*
  HERALD_LOG=warn "$herald" serve --host 127.0.0.1 --port "$port" --database "/tmp/bench-cluster-$port.db" \
    --max-connections 19500 --connection-rate-per-ip 1000000 --publish-rate-per-connection 1000000 \
    --outbox-max-messages 100000 --public-room '*' "$@" >"$log" 2>&1 &
  pids+=($!)
}
wait_ready() {  # wait_ready NODES: every node answers /health, and sees NODES nodes when clustered
  local want=$1 port
  for port in "${PORTS[@]:0:${#pids[@]}}"; do
    for _ in $(seq 150); do
      curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
      sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "node on $port did not start" >&2; exit 1; }
  done
  [ "$want" -gt 1 ] || return 0
  for _ in $(seq 100); do
    local n
    n=$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:${PORTS[0]}/api/cluster/nodes" |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    [ "$n" -ge "$want" ] && return 0
    sleep 0.1
  done
  echo "the cluster did not form ($want nodes)" >&2
  exit 1
}
stop_nodes() {  # SIGTERM (graceful: every acknowledged publish committed), then SIGKILL after 15 s
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
trap stop_nodes EXIT

run() {  # run SETUP LOAD REP BENCH-ARGS...: fresh nodes, one bench, nodes stopped
  local setup=$1 load=$2 rep=$3; shift 3
  local tag=$setup.$load.$rep
  case $setup in
    cross | same)
      local schema=herald_bench_$rep prefix=herald-bench-$tag-$(date +%s%N)
      "${psql_[@]}" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
      local pg="$POSTGRES_TEST_URL?options=-csearch_path%3D$schema" i
      for i in 0 1 2; do
        start_node "${PORTS[$i]}" "$out/logs/$tag.node$i.log" --postgres "$pg" --redis "$REDIS_TEST_URL" --redis-prefix "$prefix"
      done
      wait_ready 3
      ;;
    postgres)
      "${psql_[@]}" -c "DROP SCHEMA IF EXISTS herald_bench_pg CASCADE; CREATE SCHEMA herald_bench_pg" >/dev/null
      start_node "${PORTS[0]}" "$out/logs/$tag.log" --postgres "$POSTGRES_TEST_URL?options=-csearch_path%3Dherald_bench_pg"
      wait_ready 1
      ;;
    sqlite)
      start_node "${PORTS[0]}" "$out/logs/$tag.log"
      wait_ready 1
      ;;
  esac
  local target=127.0.0.1:${PORTS[0]} where=()
  # cross: subscribers on node B, the publisher on node A
  [ "$setup" = cross ] && { target=127.0.0.1:${PORTS[1]}; where=(--publish-target "127.0.0.1:${PORTS[0]}"); }
  local measured=() pid
  for pid in "${pids[@]}"; do measured+=(--server-pid "$pid"); done
  echo "rep $rep: $setup $load" >&2
  "$herald" bench --target "$target" "${where[@]}" --token "$token" "${measured[@]}" --duration "$DURATION" \
    --scenario fanout --subscribers "$SUBS" --json "$@" >"$out/$tag.json" || echo "run $tag failed" >&2
  stop_nodes
}

for rep in $(seq "$REPS"); do
  for setup in $SETUPS; do
    run "$setup" closed "$rep" --in-flight 64
    run "$setup" rate "$rep" --rate "$RATE" --threads 1
  done
done

PYTHONPATH=scripts python3 - "$out" "$REPS" "$RATE" "$SUBS" <<'EOF'
import glob, json, os, sys

from bench_stats import f2, k, print_table, us

out, reps, rate, subs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    setup, load, rep, _ = os.path.basename(path).split(".")
    try:
        r = json.load(open(path))
    except json.JSONDecodeError:
        continue
    runs.setdefault((load, setup), []).append(r)
    errors = r["errors"]
    if any(v for k, v in errors.items() if k != "connect_retries"):
        print(f"note: {setup} {load} rep {rep}: errors {errors} {r.get('last_error') or ''}", file=sys.stderr)

r_ = f"{rate:g}"
rows = [
    (f"64 in flight: delivered msgs/s", "closed", lambda r: r["delivered_per_sec"], k),
    (f"64 in flight: p50 latency µs", "closed", lambda r: r["latency_us"]["p50"], us),
    (f"64 in flight: p99 latency µs", "closed", lambda r: r["latency_us"]["p99"], us),
    (f"64 in flight: Herald CPU % (all nodes)", "closed", lambda r: r["server"]["cpu_percent"], us),
    (f"64 in flight: Herald µs CPU per delivered msg", "closed", lambda r: r["server"]["cpu_us_per_delivered"], f2),
    (f"{r_} msgs/s: delivered msgs/s", "rate", lambda r: r["delivered_per_sec"], k),
    (f"{r_} msgs/s: p50 latency µs", "rate", lambda r: r["latency_us"]["p50"], us),
    (f"{r_} msgs/s: p99 latency µs", "rate", lambda r: r["latency_us"]["p99"], us),
    (f"{r_} msgs/s: Herald µs CPU per delivered msg", "rate", lambda r: r["server"]["cpu_us_per_delivered"], f2),
]
names = {
    "cross": "3 nodes, publish A → subscribers B",
    "same": "3 nodes, publish A → subscribers A",
    "postgres": "1 node, --postgres",
    "sqlite": "1 node, SQLite (embedded)",
}
setups = [s for s in names if any(key[1] == s for key in runs)]
print_table(f"fan-out 1 room × {subs} (median of {reps} [min–max])", setups, [names[s] for s in setups], rows, runs)
EOF
