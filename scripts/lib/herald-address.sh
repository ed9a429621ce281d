# Sourced by the scripts that run a throwaway Herald on port 0 with its stdout in DIR/out and
# its stderr in DIR/err.
# wait_for_address DIR: waits up to 10 s for the "Herald listening on" line and sets $addr
# (host:port); when it never comes, prints Herald's stderr and returns 1.
wait_for_address() {
  addr=
  for _ in $(seq 100); do
    # (The background job may not have created the file yet.)
    addr=$(sed -n 's|^Herald listening on http://||p' "$1/out" 2>/dev/null || true)
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  cat "$1/err" >&2
  echo "herald did not start" >&2
  return 1
}
