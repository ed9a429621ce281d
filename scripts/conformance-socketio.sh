#!/usr/bin/env bash
# Runs the official Engine.IO and Socket.IO protocol suites (../shared/conformance/socketio, or
# $SOCKETIO_CONFORMANCE) against Herald in Socket.IO conformance mode: `/engine.io/` echoes,
# `/socket.io/` serves the suites' namespaces, with the heartbeat and payload limit they expect.
# Exits non-zero if any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
suites=${SOCKETIO_CONFORMANCE:-$PWD/../shared/conformance/socketio}
[ -x "$suites/run.sh" ] || suites=/work/shared/conformance/socketio
cargo build --locked --bin herald
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
target/debug/herald serve --host 127.0.0.1 --port 0 --socketio-conformance \
  --database "$work/herald.db" --max-message-bytes 1000000 --cors-origin '*' \
  --socketio-ping-interval-ms 300 --socketio-ping-timeout-ms 200 \
  --socketio-connect-timeout-ms 1000 --connection-rate-per-ip 10000 >"$work/out" 2>"$work/err" &
pid=$!
source scripts/lib/herald-address.sh
wait_for_address "$work"
"$suites/run.sh" engine.io "http://$addr"
"$suites/run.sh" socket.io "http://$addr"
