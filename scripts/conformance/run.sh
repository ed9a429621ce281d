#!/usr/bin/env bash
# Vendored from the workplace conformance kit; see README.md in this folder.
# Runs the Autobahn TestSuite fuzzing client against a WebSocket echo endpoint and exits 0 only
# when every case's behaviour and close behaviour are OK, NON-STRICT or INFORMATIONAL.
#   run.sh ws://127.0.0.1:PORT/path [CASES_JSON] [EXCLUDE_JSON]
# Defaults: all cases except 12.* and 13.* (permessage-deflate), which take ~11 minutes.
# Writes reports to $AUTOBAHN_OUT (default ./autobahn-reports): index.html to read, index.json to parse.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
url=${1:?usage: run.sh ws://host:port/path [cases-json] [exclude-json]}
cases=${2:-'["*"]'}
exclude=${3:-'["12.*","13.*"]'}
out=${AUTOBAHN_OUT:-$PWD/autobahn-reports}
"$here/setup.sh"
venv=${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/autobahn-venv27}
mkdir -p "$out"
spec="$out/spec.json"
cat >"$spec" <<JSON
{"outdir": "$out", "servers": [{"agent": "herald", "url": "$url"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
(cd "$out" && "$venv/bin/wstest" -m fuzzingclient -s "$spec" >"$out/wstest.log" 2>&1) || true
python3 "$here/parse.py" "$out/index.json"
