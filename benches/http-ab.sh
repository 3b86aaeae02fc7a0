#!/usr/bin/env bash
# Two builds of the HTTP bench server side by side: the same requests against both, order
# alternated every round, the ratio after/before per round and its median.
#
# Usage: benches/http-ab.sh BEFORE_BIN AFTER_BIN [PATH...]
#   BIN: an http_load example binary (cargo build --release --example http_load), e.g. one
#        built from an earlier commit with `git worktree add` and the current one.
#   PATH: request paths (default: /services/svc-007 /services /metrics)
# Environment: ROUNDS (default 6), DURATION seconds per run (default 5), CONNECTIONS (16).
# Needs wrk (apt-get install -y wrk).
set -euo pipefail
[ "$#" -ge 2 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
BEFORE=$1 AFTER=$2
shift 2
PATHS=("$@")
[ "${#PATHS[@]}" -gt 0 ] || PATHS=(/services/svc-007 /services /metrics)
ROUNDS=${ROUNDS:-6} DURATION=${DURATION:-5} CONNECTIONS=${CONNECTIONS:-16}
PB=${PORT_BEFORE:-5851} PA=${PORT_AFTER:-5852}
command -v wrk >/dev/null || { echo "missing wrk" >&2; exit 1; }

"$BEFORE" serve --port "$PB" --services 200 >/dev/null 2>&1 & SB=$!
"$AFTER" serve --port "$PA" --services 200 >/dev/null 2>&1 & SA=$!
trap 'kill $SB $SA 2>/dev/null || true' EXIT
for port in "$PB" "$PA"; do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/health/live" >/dev/null && break
        sleep 0.1
    done
done

rps() { wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$1$2" | awk '/Requests\/sec/ {print $2}'; }

for path in "${PATHS[@]}"; do
    # warm both
    rps "$PB" "$path" >/dev/null; rps "$PA" "$path" >/dev/null
    ratios=()
    echo "GET $path (req/s, wrk -t2 -c$CONNECTIONS -d${DURATION}s; load average at start: $(cut -d' ' -f1 /proc/loadavg))"
    for round in $(seq "$ROUNDS"); do
        if (( round % 2 )); then b=$(rps "$PB" "$path"); a=$(rps "$PA" "$path"); order="before first"
        else a=$(rps "$PA" "$path"); b=$(rps "$PB" "$path"); order="after first"; fi
        ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')
        ratios+=("$ratio")
        echo "  round $round ($order): before $b, after $a, after/before $ratio"
    done
    median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    echo "  median of per-round ratios: $median"
done
