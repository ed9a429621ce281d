#!/usr/bin/env bash
# Start-up time to a listening socket on a large existing store (docs/performance.md).
#   scripts/bench-startup.sh            # ROWS=2600000 (a ~1.4 GB store) STARTS=5
# Builds the store once (about 2.5 minutes), then times each start from exec to the
# "listening" line, with a warm page cache and, when this user may drop it, a cold one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2600000} STARTS=${STARTS:-5}
db=${DB:-target/bench-startup.db}
herald=target/release/herald
cargo build --release -p herald --quiet
export JWT_SECRET=bench-startup-secret-of-at-least-32-bytes HERALD_LOG=warn

if [ ! -f "$db" ]; then
  # The schema is Herald's own: a first start creates it.
  timeout 3 "$herald" serve --port 3392 --database "$db" >/dev/null 2>&1 || true
  python3 - "$db" "$ROWS" <<'EOF'
import json, sqlite3, sys, time
db, rows = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
c.execute("PRAGMA synchronous = OFF")
now = int(time.time() * 1000)
def events():
    for seq in range(1, rows + 1):
        room, user = f"room-{seq % 100}", f"user-{seq % 1000}"
        body = json.dumps({"id": f"{seq:032x}", "seq": seq, "type": "bench.msg", "roomId": room,
                           "userId": user, "data": {"n": seq, "pad": "x" * 200},
                           "timestamp": "2026-01-01T00:00:00.000Z"})
        yield seq, "bench.msg", user, room, now - (rows - seq) * 10, body
c.executemany("INSERT INTO events (seq, type, user_id, room_id, ts, body) VALUES (?, ?, ?, ?, ?, ?)", events())
c.commit()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
EOF
fi
ls -l "$db" | awk '{printf "store: %.2f GB\n", $5 / 1e9}'

start_once() {
  python3 - "$herald" "$db" <<'EOF'
import subprocess, sys, time
t = time.monotonic()
p = subprocess.Popen([sys.argv[1], "serve", "--port", "3392", "--database", sys.argv[2]],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for line in p.stdout:
    if "listening" in line.lower():
        print(f"{(time.monotonic() - t) * 1000:.1f}")
        break
p.terminate()
p.wait()
EOF
}

warm=() cold=()
for _ in $(seq "$STARTS"); do warm+=("$(start_once)"); done
echo "warm page cache, ms to listening: ${warm[*]}"
if sync && echo 3 2>/dev/null >/proc/sys/vm/drop_caches; then
  for _ in $(seq "$STARTS"); do
    sync; echo 3 >/proc/sys/vm/drop_caches
    cold+=("$(start_once)")
  done
  echo "cold page cache, ms to listening: ${cold[*]}"
else
  echo "cold page cache: not measured (dropping the page cache needs root)"
fi
