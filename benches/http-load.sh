#!/usr/bin/env bash
# The bench server with 200 services: GET /services and GET /services/svc-007 side by side
# with nginx serving the same bytes (throughput and latency at a fixed rate, over HTTP/1.1 and
# h2c, through benches/nginx-ab.sh), then SSE fan-out to 1,000 HTTP/2 subscribers.
#
# Needs: wrk, h2load (nghttp2-client), nginx, curl, python3.
#   apt-get install -y wrk nghttp2-client nginx-light
# Usage: benches/http-load.sh            (DURATION=5 ROUNDS=6 RATE=10000 SUBSCRIBERS=1000)
#        SECTIONS=sse benches/http-load.sh   only the SSE fan-out (also: throughput, latency)
#        SSE_FULL_LIST=1                     also the stream that opts in to services.updated
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-6}
RATE=${RATE:-10000}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
PORT=${PORT:-5801}
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
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" serve --port "$PORT" --services 200 >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health/live" >/dev/null && break
    sleep 0.1
done

echo "== $(nproc) cores, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
# Throughput and fixed-rate latency against nginx serving the same bytes: benches/nginx-ab.sh.
modes=""
wants throughput && modes+="throughput "
wants latency && modes+="latency "
if [ -n "$modes" ]; then
    benches/nginx-ab.sh --registry "http://127.0.0.1:$PORT" --path /services \
        --path /services/svc-007 --rounds "$ROUNDS" --duration "$DURATION" --rate "$RATE" \
        --modes "$modes"
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
