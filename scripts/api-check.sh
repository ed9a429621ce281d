#!/usr/bin/env bash
# API checks: schemathesis generates requests from /openapi.json of a running herald and fails
# on any 5xx answer and on any answer the description does not declare (status, content type,
# body schema). See docs/api-checks.md.
#
# Environment:
#   API_CHECK_EXAMPLES  test cases per operation and phase (default 25; the long run uses more)
#   API_CHECK_SEED      schemathesis seed, to repeat a run exactly (default: a random one, printed)
#   API_CHECK_OTHERS    0 to run only the operator pass, not the user and anonymous ones (default 1)
#   API_CHECK_BIN       the herald binary to test (default: target/debug/herald, built here)
# Extra arguments are passed to every `schemathesis run` (e.g. --include-path /api/streams).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

examples=${API_CHECK_EXAMPLES:-25}
seed=${API_CHECK_SEED:-$((RANDOM * 32768 + RANDOM))}
others=${API_CHECK_OTHERS:-1}

# schemathesis, pinned, in a project-local virtualenv (re-installed when the pin changes).
venv=target/venv-schemathesis
requirements=scripts/requirements-api-check.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" || [ ! -x "$venv/bin/schemathesis" ]; then
  command -v python3 >/dev/null || { echo "python3 not found: install Python 3.9+ (with venv)" >&2; exit 1; }
  echo "installing schemathesis into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    # Debian's python3 comes without venv (ensurepip) unless python3-venv is installed.
    echo "installing python3-venv"
    sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_if_needed apt-get update -qq && sudo_if_needed apt-get install -y -qq python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
schemathesis=$root/$venv/bin/schemathesis

if [ -z "${API_CHECK_BIN:-}" ]; then
  cargo build --locked --bin herald
  API_CHECK_BIN=target/debug/herald
fi

work=$(mktemp -d)
pid=
sse_pid=
cleanup() {
  if [ -n "$sse_pid" ]; then
    kill "$sse_pid" 2>/dev/null || true
    wait "$sse_pid" 2>/dev/null || true
  fi
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh secret and API key each run; the server refuses secrets under 32 bytes. The key is
# not sent: with one configured, every bearer token the checks send is also compared to it.
JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
api_key=api-check-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export JWT_SECRET
# `lobby` is public, so anonymous reads of a room are served as well as refused.
HERALD_API_KEYS="[\"$api_key\"]" HERALD_LOG=warn \
  "$API_CHECK_BIN" serve --host 127.0.0.1 --port 0 --database "$work/herald.db" \
  --public-room lobby >"$work/out" 2>"$work/err" &
pid=$!
source scripts/lib/herald-address.sh
wait_for_address "$work"
token=$("$API_CHECK_BIN" token --user ops --role admin)
# A plain user whose token grants one room: the refusals (403) an operator never meets.
user_token=$("$API_CHECK_BIN" token --user alice --rooms lobby)
base=http://$addr

# What the operations on one stream or one connection need to get past 404 (see
# scripts/api-check.toml): streams to read, publish to and delete, and an open SSE connection
# to add subscriptions to.
for spec in '{"name":"ticker"}' '{"name":"ticker-throttled","throttleMs":200}' \
  '{"name":"ticker-batched","batchMs":200}' '{"name":"doomed"}'; do
  curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "$spec" "$base/api/streams"
done
# A retained message each, so a new reader gets a record at once.
for name in ticker ticker-throttled ticker-batched; do
  curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"price":1}' "$base/api/streams/$name"
done
curl -sN "$base/api/realtime/stream" >"$work/sse" &
sse_pid=$!
API_CHECK_CONNECTION_ID=
for _ in $(seq 50); do
  API_CHECK_CONNECTION_ID=$(grep -so '"connectionId":"[0-9a-f-]*"' "$work/sse" | head -1 | cut -d'"' -f4 || true)
  [ -n "$API_CHECK_CONNECTION_ID" ] && break
  sleep 0.1
done
[ -n "$API_CHECK_CONNECTION_ID" ] || { echo "the SSE stream named no connection" >&2; exit 1; }
export API_CHECK_CONNECTION_ID

reports=$root/target/api-check
rm -rf "$reports"
mkdir -p "$reports"
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
# Run from target/api-check: schemathesis and Hypothesis keep their state in the working
# directory (.schemathesis/, .hypothesis/).
run() {
  local name=$1
  shift
  echo
  echo "--- schemathesis: $name (seed $seed, $examples examples per operation)"
  (cd "$reports" && "$schemathesis" --config-file "$root/scripts/api-check.toml" run \
    "$base/openapi.json" \
    --checks "$checks" \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 2 \
    --request-timeout 10 \
    --no-color \
    --report junit,vcr --report-junit-path "$reports/$name.xml" --report-dir "$reports/$name" \
    "$@")
}

status=0
run admin -H "Authorization: Bearer $token" "$@" || status=1
if [ "$others" != 0 ]; then
  run user -H "Authorization: Bearer $user_token" "$@" || status=1
  run anonymous --generation-with-security-parameters false "$@" || status=1
fi

# A panic in a handler is a 500 the checks above report; anything the server logged at
# error level is worth a look as well.
if grep -q 'ERROR\|panicked' "$work/err"; then
  echo
  echo "--- the server logged errors:"
  grep -A3 'ERROR\|panicked' "$work/err" | head -50
  status=1
fi

if [ "$status" != 0 ]; then
  echo
  echo "API checks failed (seed $seed): see the findings above, target/api-check/ and docs/api-checks.md" >&2
  exit 1
fi
echo
echo "API checks passed (seed $seed)."
