#!/usr/bin/env bash
# GET /services with 200 services, side by side with nginx serving the same bytes from a file;
# then open-loop latency at a fixed rate, and SSE fan-out to 1,000 HTTP/2 subscribers.
#
# Needs: wrk, h2load (nghttp2-client), nginx, curl, python3.
#   apt-get install -y wrk nghttp2-client nginx-light
# Usage: benches/http-load.sh            (DURATION=10 ROUNDS=3 RATE=10000 SUBSCRIBERS=1000)
#        SECTIONS=sse benches/http-load.sh   only the SSE fan-out (also: throughput, latency)
#        SSE_FULL_LIST=1                     also the stream that opts in to services.updated
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-10000}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
PORT=${PORT:-5801}
NGINX_PORT=${NGINX_PORT:-5802}
NGINX_H2C_PORT=${NGINX_H2C_PORT:-5803}
SECTIONS=${SECTIONS:-throughput latency sse}
wants() { [[ " $SECTIONS " == *" $1 "* ]]; }

for tool in wrk h2load nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

cargo build --release --example http_load
BIN=target/release/examples/http_load
WORK=$(mktemp -d)
SERVER=""

cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" serve --port "$PORT" --services 200 >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health/live" >/dev/null && break
    sleep 0.1
done

mkdir -p "$WORK/www"
curl -sf "http://127.0.0.1:$PORT/services" >"$WORK/www/services.json"
# nginx's workers run unprivileged: they must be able to read the file.
chmod 755 "$WORK" "$WORK/www"
chmod 644 "$WORK/www/services.json"
cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/tmp;
    proxy_temp_path $WORK/tmp;
    fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp;
    scgi_temp_path $WORK/tmp;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_H2C_PORT http2;
        http2_max_concurrent_streams 128;
        location = /services {
            default_type application/json;
            alias $WORK/www/services.json;
        }
    }
}
EOF
mkdir -p "$WORK/tmp"
nginx -c "$WORK/nginx.conf"
sleep 0.5

echo "== body: $(wc -c <"$WORK/www/services.json") bytes, $(nproc) cores, $(date -u +%FT%TZ)"
curl -sf "http://127.0.0.1:$NGINX_PORT/services" -o "$WORK/nginx-check.json"
cmp "$WORK/nginx-check.json" "$WORK/www/services.json"

wrk_rps() { wrk -t2 -c16 -d"${DURATION}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
h2load_rps() {
    h2load -c4 -m16 -D "$DURATION" "$1" 2>/dev/null \
        | awk '/^finished in/ {gsub(",", "", $4); print $4}'
}

if wants throughput; then
: >"$WORK/results"
for round in $(seq "$ROUNDS"); do
    r=$(wrk_rps "http://127.0.0.1:$PORT/services")
    n=$(wrk_rps "http://127.0.0.1:$NGINX_PORT/services")
    echo "round $round wrk http/1.1: registry=$r nginx=$n"
    echo "wrk $r $n" >>"$WORK/results"
    r=$(h2load_rps "http://127.0.0.1:$PORT/services")
    n=$(h2load_rps "http://127.0.0.1:$NGINX_H2C_PORT/services")
    echo "round $round h2load h2c:   registry=$r nginx=$n"
    echo "h2load $r $n" >>"$WORK/results"
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    tool, r, n = line.split()
    rows.setdefault(tool, []).append((float(r), float(n)))
for tool, pairs in rows.items():
    r = statistics.median(p[0] for p in pairs)
    n = statistics.median(p[1] for p in pairs)
    ratios = [p[0] / p[1] for p in pairs]
    print(f"{tool}: median registry={r:.0f} req/s nginx={n:.0f} req/s "
          f"ratio={r / n:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
PY
fi

if wants latency; then
echo "== latency at $RATE req/s: h2load --rps, 16 connections, 10 s (per-request log)"
latency() {
    local label=$1
    shift
    rm -f "$WORK/latency.log"  # h2load appends to an existing log
    h2load "$@" --log-file "$WORK/latency.log" >"$WORK/h2load.out" 2>&1 || true
    python3 - "$label" "$WORK/latency.log" <<'PY'
import sys
label, path = sys.argv[1], sys.argv[2]
rows = [line.split("\t") for line in open(path) if line.strip()]
ok = sorted(int(r[2]) for r in rows if r[1] == "200")
failed = sum(1 for r in rows if r[1] != "200")
span = (max(int(r[0]) for r in rows) - min(int(r[0]) for r in rows)) / 1e6 or 1
def pct(q):
    return ok[min(len(ok) - 1, max(0, int(len(ok) * q + 0.999999) - 1))]
print(f"{label}: {len(ok)} ok, {failed} failed, {len(rows) / span:.0f} req/s, "
      f"p50={pct(0.5)}us p90={pct(0.9)}us p99={pct(0.99)}us p99.9={pct(0.999)}us max={ok[-1]}us")
PY
}
PER_CLIENT=$((RATE / 16))
latency "registry http/1.1" --h1 -c16 --rps "$PER_CLIENT" -D 10 "http://127.0.0.1:$PORT/services"
latency "nginx    http/1.1" --h1 -c16 --rps "$PER_CLIENT" -D 10 "http://127.0.0.1:$NGINX_PORT/services"
latency "registry h2c     " -c16 --rps "$PER_CLIENT" -D 10 "http://127.0.0.1:$PORT/services"
latency "nginx    h2c     " -c16 --rps "$PER_CLIENT" -D 10 "http://127.0.0.1:$NGINX_H2C_PORT/services"
fi

wants sse || exit 0
echo "== SSE fan-out: $SUBSCRIBERS subscribers over 4 HTTP/2 connections"
# First on a fresh heap, so its memory figure is not flattered by an earlier run.
echo "-- default stream (every change but services.updated)"
"$BIN" sse --addr "127.0.0.1:$PORT" --pid "$SERVER" --subscribers "$SUBSCRIBERS" \
    --connections 4 --changes 50
echo "-- events=service.*"
"$BIN" sse --addr "127.0.0.1:$PORT" --pid "$SERVER" --subscribers "$SUBSCRIBERS" \
    --connections 4 --changes 50 --query "events=service.*"
if [ "${SSE_FULL_LIST:-0}" = 1 ]; then
    echo "-- events=* (opted in: each change also carries services.updated, all 200 entries)"
    "$BIN" sse --addr "127.0.0.1:$PORT" --pid "$SERVER" --subscribers "$SUBSCRIBERS" \
        --connections 4 --changes 50 --query "events=*"
fi
