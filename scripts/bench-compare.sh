#!/usr/bin/env bash
# Measures Herald against the benchmark peers (Node `ws`, Bun, Socket.IO) on the same scenarios, in one
# run, each repeated REPS times with a freshly started server, and prints a Markdown table of
# medians and ranges (the table in docs/performance.md). Raw JSON goes to target/bench-results.
#   scripts/bench-compare.sh            # REPS=3 SERVERS="herald herald-rooms node-ws bun" DURATION=5
# SCENARIOS picks some of the runs (default: all of them, as named below); OUT is where the
# JSON goes (default target/bench-results), so a partial run does not mix with a full one:
#   SCENARIOS=rooms-rate SERVERS="herald bun" REPS=5 DURATION=20 OUT=target/bench-latency scripts/bench-compare.sh
# `herald` speaks Herald's protocol (subscribe with a room filter, publish over WebSocket);
# `herald-rooms` is the same binary speaking the peers' seed-004 room protocol on /ws/rooms
# (join, message; every message a durable chat.message event).
# `socketio` is the Socket.IO peer (--protocol socketio); `herald-sio` is Herald's Socket.IO
# namespace /chat (--protocol socketio-chat with the token; HERALD_SIO_ARGS adds serve flags).
# Neither is in the default SERVERS; they run the scenarios fanout, rooms-rate, rooms-max and
# idle-10k:
#   SERVERS="herald-sio socketio" SCENARIOS="fanout rooms-rate rooms-max idle-10k" scripts/bench-compare.sh
# The peers come from ../shared/bench/peers (PEERS_DIR to override) and are installed with npm.
# BEFORE=<an earlier herald binary> adds the servers `before` and `before-rooms` (that binary,
# the two protocols), so a change is measured in interleaved pairs against the build before it:
#   BEFORE=/tmp/old/herald SERVERS="before herald before-rooms herald-rooms" \
#     SCENARIOS="fanout rooms-max" REPS=5 OUT=target/bench-pairs scripts/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
SERVERS=${SERVERS:-"herald herald-rooms node-ws bun"}
DURATION=${DURATION:-5}
SCENARIOS=${SCENARIOS:-"fanout fanout-deep rooms-rate rooms-max idle-10k idle-19k idle-sse-10k idle-sse-19k ingest ingest-batch"}
PEERS_DIR=${PEERS_DIR:-../shared/bench/peers}
out=${OUT:-target/bench-results}
mkdir -p "$out" target/bench-peers
cargo build --release --locked --bin herald >/dev/null
herald=$PWD/target/release/herald
export JWT_SECRET=bench-compare-secret-of-at-least-32-bytes
token=$("$herald" token --user bench --role admin --ttl 86400)
ulimit -n "$(ulimit -Hn)"

install_peer() {  # copies a peer out of the read-only share and installs its packages once
  local name=$1 dir=target/bench-peers/$1
  [ -d "$dir/node_modules" ] && return
  cp -r "$PEERS_DIR/$name/." "$dir/"
  chmod -R u+w "$dir"
  (cd "$dir" && npm ci --no-audit --no-fund >/dev/null)
}

pid=
start() {  # start SERVER PORT: a fresh server, its pid in $pid
  local server=$1 port=$2
  local binary=$herald
  [[ $server == before* ]] && binary=${BEFORE:?BEFORE names the earlier binary}
  local extra=()  # serve flags of the Socket.IO flavour
  [[ $server == herald-sio ]] && read -ra extra <<<"${HERALD_SIO_ARGS:-}"
  case $server in
    herald*|before*)
      rm -f /tmp/bench-compare.db*
      HERALD_LOG=warn "$binary" serve --host 127.0.0.1 --port "$port" --database /tmp/bench-compare.db \
        --max-connections 19500 --connection-rate-per-ip 1000000 --publish-rate-per-connection 1000000 \
        --outbox-max-messages 100000 --public-room '*' "${extra[@]}" >/dev/null 2>&1 &
      ;;
    node-ws) install_peer node-ws; (cd target/bench-peers/node-ws && PORT=$port exec node server.js >/dev/null 2>&1) & ;;
    bun) install_peer bun; (cd target/bench-peers/bun && PORT=$port exec node_modules/.bin/bun server.js >/dev/null 2>&1) & ;;
    socketio) install_peer socketio; (cd target/bench-peers/socketio && PORT=$port exec node server.js >/dev/null 2>&1) & ;;
  esac
  pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
  echo "$server did not start" >&2; exit 1
}
stop() {  # no graceful shutdown needed between runs: kill the server and any child
  pkill -9 -P "$pid" 2>/dev/null || true
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench() {  # bench NAME SERVER SECS ARGS...: one run against a fresh server, JSON saved
  local name=$1 server=$2 secs=$3; shift 3
  [[ " $SCENARIOS " == *" $name "* ]] || return 0
  local port=3300 protocol=(--protocol herald)
  case $server in
    herald|before) ;;
    herald-rooms|before-rooms) protocol=(--protocol rooms --ws-path /ws/rooms) ;;
    herald-sio) protocol=(--protocol socketio-chat) ;;
    socketio) protocol=(--protocol socketio) ;;
    *) protocol=(--protocol rooms) ;;
  esac
  start "$server" $port
  local real=$pid
  # node/bun run under a subshell: measure the runtime process itself
  [[ $server != herald* && $server != before* ]] && real=$(pgrep -P "$pid" -n || echo "$pid")
  "$herald" bench --target 127.0.0.1:$port "${protocol[@]}" --token "$token" --server-pid "$real" \
    --duration "$secs" --json "$@" >"$out/$name.$server.$rep.json" || echo "run $name/$server failed" >&2
  stop
}

for rep in $(seq "$REPS"); do
  for server in $SERVERS; do
    echo "rep $rep: $server" >&2
    bench fanout "$server" "$DURATION" --scenario fanout --subscribers 1000 --in-flight 64
    # A deeper window: more messages per send for every server (docs/performance.md).
    [[ $server == socketio || $server == herald-sio ]] ||
      bench fanout-deep "$server" "$DURATION" --scenario fanout --subscribers 1000 --in-flight 256
    bench rooms-rate "$server" "$DURATION" --scenario rooms --rooms 100 --members 10 --rate 1000 --threads 1
    bench rooms-max "$server" "$DURATION" --scenario rooms --rooms 100 --members 10 --in-flight 16
    [[ $server == *-rooms ]] && continue  # the rest does not depend on the protocol
    if [[ $server == socketio || $server == herald-sio ]]; then
      bench idle-10k "$server" 2 --scenario idle --connections 10000
      continue
    fi
    bench idle-10k "$server" 2 --scenario idle --connections 10000
    bench idle-19k "$server" 2 --scenario idle --connections 19000
    if [[ $server == herald || $server == before ]]; then
      bench idle-sse-10k "$server" 2 --scenario idle --transport sse --connections 10000
      bench idle-sse-19k "$server" 2 --scenario idle --transport sse --connections 19000
      bench ingest "$server" "$DURATION" --scenario ingest --publish http --concurrency 64
      bench ingest-batch "$server" "$DURATION" --scenario ingest --publish http --batch 100 --concurrency 2
    fi
  done
done
python3 scripts/bench-table.py "$out" "$REPS" $SERVERS
