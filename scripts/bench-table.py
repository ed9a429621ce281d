"""Summarises target/bench-results/*.json (written by bench-compare.sh) as a Markdown table:
the median of the repetitions, with the range in brackets. The servers (columns) are the
arguments after the repetitions, in bench-compare.sh's SERVERS order."""
import glob
import json
import os
import sys

from bench_stats import f2, k, kb, print_table, us

out, reps = sys.argv[1], int(sys.argv[2])
runs = {}
for path in glob.glob(os.path.join(out, "*.json")):
    name, server, _rep, _ = os.path.basename(path).split(".")
    try:
        runs.setdefault((name, server), []).append(json.load(open(path)))
    except json.JSONDecodeError:
        pass

rows = [
    ("fan-out 1×1000, 64 in flight: delivered msgs/s", "fanout", lambda r: r["delivered_per_sec"], k),
    ("fan-out: server CPU %", "fanout", lambda r: r["server"]["cpu_percent"], us),
    ("fan-out: server µs CPU per delivered msg", "fanout", lambda r: r["server"]["cpu_us_per_delivered"], f2),
    ("fan-out 1×1000, 256 in flight: delivered msgs/s", "fanout-deep", lambda r: r["delivered_per_sec"], k),
    ("fan-out, 256 in flight: server µs CPU per delivered msg", "fanout-deep", lambda r: r["server"]["cpu_us_per_delivered"], f2),
    ("100 rooms × 10, 1 000 msgs/s: p50 latency µs", "rooms-rate", lambda r: r["latency_us"]["p50"], us),
    ("100 rooms × 10, 1 000 msgs/s: p99 latency µs", "rooms-rate", lambda r: r["latency_us"]["p99"], us),
    ("100 rooms × 10, 1 000 msgs/s: server µs CPU per delivered msg", "rooms-rate", lambda r: r["server"]["cpu_us_per_delivered"], f2),
    ("100 rooms × 10, as fast as possible: delivered msgs/s", "rooms-max", lambda r: r["delivered_per_sec"], k),
    ("100 rooms × 10, as fast as possible: server µs CPU per delivered msg", "rooms-max", lambda r: r["server"]["cpu_us_per_delivered"], f2),
    ("10 000 idle WebSockets: server KB RSS per connection", "idle-10k", lambda r: r["server"]["rss_per_connection_bytes"], kb),
    ("19 000 idle WebSockets: server KB RSS per connection", "idle-19k", lambda r: r["server"]["rss_per_connection_bytes"], kb),
    ("10 000 idle SSE streams: server KB RSS per connection", "idle-sse-10k", lambda r: r["server"]["rss_per_connection_bytes"], kb),
    ("19 000 idle SSE streams: server KB RSS per connection", "idle-sse-19k", lambda r: r["server"]["rss_per_connection_bytes"], kb),
    ("HTTP publish ingest (durable), 64 in flight: events/s", "ingest", lambda r: r["acked_per_sec"], k),
    ("HTTP publish ingest: p99 ack latency µs", "ingest", lambda r: r["ack_latency_us"]["p99"], us),
    ("HTTP batch ingest (durable), 100 events per request, 2 in flight: events/s", "ingest-batch", lambda r: r["acked_per_sec"], k),
    ("HTTP batch ingest: p99 ack latency µs", "ingest-batch", lambda r: r["ack_latency_us"]["p99"], us),
]
servers = sys.argv[3:] or ["herald", "herald-rooms", "node-ws", "bun"]
# Only the scenarios that ran (SCENARIOS may pick a few).
rows = [row for row in rows if any((row[1], server) in runs for server in servers)]
print_table(f"scenario (median of {reps} [min–max])", servers, servers, rows, runs)
