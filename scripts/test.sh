#!/usr/bin/env bash
# Herald's whole test suite, runnable on a fresh machine: installs what it needs when missing,
# then checks formatting, lints and the server's layers, runs unit and integration tests (real
# binary, real sockets, real SQLite files, real PostgreSQL and Redis started by
# scripts/services.sh, headless Chromium), the API checks (schemathesis against /openapi.json),
# short runs of every fuzz target, the Autobahn WebSocket conformance suite against the echo
# endpoint, and the official Engine.IO and Socket.IO protocol suites.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
# The build needs several GB (target/); say how much there is, so a full disk is plain to see.
df -h . | tail -1 | awk '{print "disk free here: " $4}'

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

step "Node packages for the seed-client tests"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing Node.js (the seeds' clients run under Node in the tests)"
  sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq && sudo_if_needed apt-get install -y -qq nodejs npm
fi
[ -d tests/seed-clients/node_modules/y-websocket ] || npm ci --prefix tests/seed-clients --no-audit --no-fund

step "Chromium and playwright-core for the browser tests"
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium (the dashboard and demo tests drive it headless)"
  sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq && sudo_if_needed apt-get install -y -qq chromium
fi
[ -d tests/browser/node_modules/playwright-core ] || npm ci --prefix tests/browser --no-audit --no-fund

step "PostgreSQL and Redis for the scale-out tests"
# Left running afterwards (under target/services/), so that other runs from this checkout can
# share them; `scripts/services.sh stop` stops them.
# (Two steps: a failure inside `eval "$(...)"` would not stop this script.)
services=$(scripts/services.sh start)
eval "$services"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "layers"
# crates/server/src imports only downwards: api → transport → app → http → auth, config
# (docs/architecture.md, "Server"); herald-core's modules import each other without circles.
scripts/check-layers.sh
scripts/check-core-cycles.py

step "cargo test"
# A bound on the whole step (build included), so that a test that hangs fails the run with a
# message instead of holding it until an outer limit; libtest names any test still running
# after 60 s ("has been running for over 60 seconds").
status=0
timeout --kill-after=1m 45m cargo test --workspace --locked || status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "cargo test did not finish within 45 minutes: see the test named as running for over 60 seconds" >&2
fi
[ "$status" = 0 ] || exit "$status"

step "API checks (schemathesis)"
# Generated requests against /openapi.json of the real binary: no 5xx, and every answer as
# documented (docs/api-checks.md). About a minute on two cores, plus schemathesis' installation
# into target/venv-schemathesis on a fresh machine; bounded like the tests.
timeout --kill-after=30s 15m scripts/api-check.sh

step "fuzzing (short runs)"
# Each target of fuzz/ (docs/fuzzing.md) for 20 s from its seeds, with cargo-fuzz on the
# nightly toolchain: a panic or a broken invariant fails the run, and the input is left under
# fuzz/artifacts/<target>/. On two cores: about 4 minutes with the build of fuzz/target/ from
# scratch, 2 once it is built.
# What the runs find goes to a scratch directory: fuzz/corpus/ keeps the seeds only.
cargo +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
timeout --kill-after=30s 15m cargo +nightly fuzz build
fuzz_scratch=$(mktemp -d)
fuzz_failed=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$fuzz_scratch/$target"
  fuzz_corpora=("$fuzz_scratch/$target")
  [ -d "fuzz/corpus/$target" ] && fuzz_corpora+=("fuzz/corpus/$target")
  fuzz_args=(-max_total_time=20)
  [ -f "fuzz/dict/$target.dict" ] && fuzz_args+=("-dict=fuzz/dict/$target.dict")
  timeout --kill-after=10s 3m cargo +nightly fuzz run "$target" "${fuzz_corpora[@]}" \
    -- "${fuzz_args[@]}" >"$fuzz_scratch/$target.log" 2>&1 || {
    fuzz_failed+=("$target")
    tail -n 60 "$fuzz_scratch/$target.log" >&2
  }
  grep -h '^#[0-9]*.*DONE' "$fuzz_scratch/$target.log" | sed "s/^/$target: /" || true
done
rm -rf "$fuzz_scratch"
if [ ${#fuzz_failed[@]} -gt 0 ]; then
  echo "fuzzing found failures in: ${fuzz_failed[*]} (inputs under fuzz/artifacts/; see docs/fuzzing.md)" >&2
  exit 1
fi

step "WebSocket conformance (Autobahn TestSuite)"
# About 15 s of cases (plus the suite's installation on a fresh machine); bounded like the
# tests, so that a stuck case fails the run.
timeout --kill-after=30s 15m scripts/conformance.sh

step "Engine.IO and Socket.IO conformance (official protocol suites)"
# About 10 s of tests, plus mocha and its packages from npm on first use.
timeout --kill-after=30s 10m scripts/conformance-socketio.sh

printf '\nAll checks passed.\n'
