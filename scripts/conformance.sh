#!/usr/bin/env bash
# Runs the Autobahn TestSuite (non-compression cases) against Herald's /echo endpoint, which is
# served by the same connection machinery as /ws. Exits non-zero if any case fails.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bin herald
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
# Autobahn sends messages up to 16 MiB: raise the message and outbox limits for this run only.
target/debug/herald serve --host 127.0.0.1 --port 0 --ws-echo \
  --database "$work/herald.db" --max-message-bytes 20000000 \
  --outbox-max-bytes 100000000 --connection-rate-per-ip 10000 >"$work/out" 2>"$work/err" &
pid=$!
source scripts/lib/herald-address.sh
wait_for_address "$work"
AUTOBAHN_OUT=${AUTOBAHN_OUT:-$PWD/target/autobahn-reports} scripts/conformance/run.sh "ws://$addr/echo"
