#!/usr/bin/env bash
# A running registry against nginx serving the same bytes from a file: the same requests to
# both, over HTTP/1.1 and h2c, in a throughput mode and a fixed-rate latency mode. Both sides
# are warmed first; each round runs both, order alternated (odd rounds registry first), and
# the result is the median of the per-round paired ratios, with every round listed.
#
# Usage: benches/nginx-ab.sh --registry URL --path PATH [--path PATH...] [options]
#   --registry URL     the registry's base URL, plain HTTP (e.g. http://127.0.0.1:8080)
#   --path PATH        a GET path on it (repeatable), e.g. /services or /services/NAME;
#                      its body is fetched once and nginx serves those bytes at PATH
#   --rounds N         paired rounds per path, protocol and mode (default 6)
#   --duration S       seconds per run (default 5)
#   --rate R           total requests/s in latency mode (default 10000)
#   --modes LIST       "throughput latency" (default both)
#   --protocols LIST   "h1 h2c" (default both)
#   --h2c-baseline-check   instead of the registry: nginx h2c with sendfile on (the earlier
#                      baseline's configuration) against nginx h2c with sendfile off, latency
#                      mode, to show why the h2c baseline turns sendfile off
# Clients: throughput h1 `wrk -t2 -c16`, h2c `h2load -c4 -m16`; latency `h2load [--h1] -c16
# --rps R/16` (one stream per connection), percentiles from h2load's per-request log.
# Ratios are registry/nginx: above 1 the registry serves more (throughput) or answers slower
# (latency percentiles). A latency run that reaches under 95 % of the asked rate is marked.
# Needs: wrk, h2load, nginx, curl, python3 (apt-get install -y wrk nghttp2-client nginx-light).
set -euo pipefail
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

REGISTRY="" PATHS=() ROUNDS=6 DURATION=5 RATE=10000 MODES="throughput latency" PROTOCOLS="h1 h2c"
BASELINE_CHECK=0
NGINX_H1_PORT=${NGINX_H1_PORT:-5871} NGINX_H2C_PORT=${NGINX_H2C_PORT:-5872}
NGINX_OLD_H2C_PORT=${NGINX_OLD_H2C_PORT:-5873}
while [ "$#" -gt 0 ]; do
    case "$1" in
    --registry) REGISTRY=${2:?--registry needs a URL}; shift 2 ;;
    --path) PATHS+=("${2:?--path needs a path}"); shift 2 ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --modes) MODES=${2:?}; shift 2 ;;
    --protocols) PROTOCOLS=${2:?}; shift 2 ;;
    --h2c-baseline-check) BASELINE_CHECK=1; shift ;;
    -h | --help) usage ;;
    *) echo "nginx-ab: unknown argument '$1'" >&2; usage ;;
    esac
done
[ -n "$REGISTRY" ] || { echo "nginx-ab: --registry URL is required" >&2; usage; }
[ "${#PATHS[@]}" -gt 0 ] || { echo "nginx-ab: at least one --path is required" >&2; usage; }
[[ "$REGISTRY" =~ ^http://[^/?#]+$ ]] ||
    { echo "nginx-ab: --registry must be a plain http://HOST:PORT URL, got '$REGISTRY'" >&2; exit 2; }
for p in "${PATHS[@]}"; do
    # The path goes into nginx's configuration and a file name: keep it to plain characters.
    [[ "$p" =~ ^/[A-Za-z0-9._~/-]*$ ]] ||
        { echo "nginx-ab: path '$p' must start with / and hold only A-Z a-z 0-9 . _ ~ / -" >&2; exit 2; }
done
for n in "$ROUNDS" "$DURATION" "$RATE"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "nginx-ab: '$n' is not a positive whole number" >&2; exit 2; }
done
for tool in wrk h2load nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "nginx-ab: missing $tool" >&2; exit 1; }
done
CONNECTIONS=16
PER_CONNECTION=$((RATE / CONNECTIONS))
[ "$PER_CONNECTION" -ge 1 ] || { echo "nginx-ab: --rate must be at least $CONNECTIONS" >&2; exit 2; }

WORK=$(mktemp -d)
cleanup() {
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/www" "$WORK/tmp"

# The registry's bytes, saved once per path, and nginx serving them at the same path.
locations=""
i=0
for p in "${PATHS[@]}"; do
    i=$((i + 1))
    file="$WORK/www/body-$i"
    type=$(curl -sf -o "$file" -w '%{content_type}' "$REGISTRY$p") ||
        { echo "nginx-ab: GET $REGISTRY$p failed" >&2; exit 1; }
    type=${type%%;*}
    locations+="location = $p { default_type ${type:-application/octet-stream}; alias $file; }
"
done
chmod 755 "$WORK" "$WORK/www"
chmod 644 "$WORK"/www/*

# nginx at its best for one small static file: workers = cores, no access log, unlimited
# keep-alive (the default closes a connection after 1,000 requests), open files cached.
# HTTP/1.1 uses sendfile. The h2c server does not: with sendfile on, nginx's HTTP/2 output
# corks the socket and clears TCP_NODELAY for every response and never sets it again before
# uncorking, so the tail of each response waits for the client's delayed ACK (about 40 ms).
# That was the fault of the earlier h2c baseline (BENCHMARKS.md, "The nginx h2c baseline").
old_server=""
if [ "$BASELINE_CHECK" = 1 ]; then
    old_server="server {
        listen 127.0.0.1:$NGINX_OLD_H2C_PORT http2;
        sendfile on;
        tcp_nopush on;
        $locations
    }"
fi
cat >"$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 128;
    open_file_cache max=64 inactive=300s;
    open_file_cache_valid 300s;
    client_body_temp_path $WORK/tmp;
    proxy_temp_path $WORK/tmp;
    fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp;
    scgi_temp_path $WORK/tmp;
    server {
        listen 127.0.0.1:$NGINX_H1_PORT;
        sendfile on;
        tcp_nopush on;
        $locations
    }
    server {
        listen 127.0.0.1:$NGINX_H2C_PORT http2;
        sendfile off;
        $locations
    }
    $old_server
}
EOF
nginx -c "$WORK/nginx.conf"
for _ in $(seq 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$NGINX_H1_PORT${PATHS[0]}" && break
    sleep 0.1
done
i=0
for p in "${PATHS[@]}"; do
    i=$((i + 1))
    curl -sf "http://127.0.0.1:$NGINX_H1_PORT$p" | cmp -s - "$WORK/www/body-$i" ||
        { echo "nginx-ab: nginx does not serve the saved bytes at $p" >&2; exit 1; }
done

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "== nginx-ab: $REGISTRY against nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(nproc) cores, $(date -u +%FT%TZ), load average $(loadavg)"
echo "   rounds $ROUNDS x ${DURATION}s per side; latency mode at $RATE req/s ($CONNECTIONS connections x $PER_CONNECTION req/s)"

# throughput URL PROTO -> req/s
throughput() {
    if [ "$2" = h1 ]; then
        wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "$1" | awk '/Requests\/sec/ {print $2}'
    else
        h2load -c4 -m16 -D "$DURATION" "$1" 2>/dev/null |
            awk '/^finished in/ {gsub(",", "", $4); print $4}'
    fi
}
# latency URL PROTO -> "rate p50 p90 p99 p99.9 max" (us)
latency() {
    local log="$WORK/latency.log" h1=()
    [ "$2" = h1 ] && h1=(--h1)
    rm -f "$log" # h2load appends to an existing log
    h2load "${h1[@]}" -c"$CONNECTIONS" --rps "$PER_CONNECTION" -D "$DURATION" \
        --log-file "$log" "$1" >"$WORK/h2load.out" 2>&1 || true
    python3 - "$log" <<'PY'
import sys
rows = [line.split("\t") for line in open(sys.argv[1]) if line.strip()]
ok = sorted(int(r[2]) for r in rows if r[1] == "200")
if not ok:
    print("0 0 0 0 0 0")
    sys.exit()
span = (max(int(r[0]) for r in rows) - min(int(r[0]) for r in rows)) / 1e6 or 1
def pct(q):
    return ok[min(len(ok) - 1, max(0, int(len(ok) * q + 0.999999) - 1))]
print(f"{len(ok) / span:.0f} {pct(0.5)} {pct(0.9)} {pct(0.99)} {pct(0.999)} {ok[-1]}")
PY
}
measure() { if [ "$1" = throughput ]; then throughput "$2" "$3"; else latency "$2" "$3"; fi; }

a_name=registry b_name=nginx
[ "$BASELINE_CHECK" = 1 ] && a_name="nginx-sendfile-on" b_name="nginx-sendfile-off"
RESULTS="$WORK/results"
: >"$RESULTS"
for p in "${PATHS[@]}"; do
    for proto in $PROTOCOLS; do
        if [ "$BASELINE_CHECK" = 1 ]; then
            [ "$proto" = h2c ] || continue
            a_url="http://127.0.0.1:$NGINX_OLD_H2C_PORT$p"
        else
            a_url="$REGISTRY$p"
        fi
        if [ "$proto" = h1 ]; then b_url="http://127.0.0.1:$NGINX_H1_PORT$p"
        else b_url="http://127.0.0.1:$NGINX_H2C_PORT$p"; fi
        for mode in $MODES; do
            [ "$BASELINE_CHECK" = 1 ] && [ "$mode" != latency ] && continue
            echo "-- GET $p, $proto, $mode (load average $(loadavg))"
            # Warm both: connections, caches, the registry's rendered body, page cache.
            measure "$mode" "$a_url" "$proto" >/dev/null
            measure "$mode" "$b_url" "$proto" >/dev/null
            for round in $(seq "$ROUNDS"); do
                if ((round % 2)); then
                    a=$(measure "$mode" "$a_url" "$proto"); b=$(measure "$mode" "$b_url" "$proto")
                    order="$a_name first"
                else
                    b=$(measure "$mode" "$b_url" "$proto"); a=$(measure "$mode" "$a_url" "$proto")
                    order="$b_name first"
                fi
                echo "   round $round ($order): $a_name [$a] $b_name [$b]"
                echo "$p|$proto|$mode|$round|$order|$a|$b|$(loadavg)" >>"$RESULTS"
            done
        done
    done
done

python3 - "$RESULTS" "$RATE" "$a_name" "$b_name" <<'PY'
import statistics, sys
path, rate, a_name, b_name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
groups = {}
for line in open(path):
    p, proto, mode, rnd, order, a, b, load = line.rstrip("\n").split("|")
    groups.setdefault((p, proto, mode), []).append((int(rnd), order, a.split(), b.split(), load))
med = statistics.median
def ratio(x, y):
    return x / y if y else float("nan")
print(f"\n== summary: ratios are {a_name}/{b_name}, per round, and their median")
print("A round where either side failed, or (fixed rate) did not hold the rate, is listed but left")
print("out of the medians: its ratio compares unlike loads.")
def median_line(values):
    valid = [v for v in values if v == v]  # NaN marks a round left out
    if not valid:
        return "no valid round"
    return f"**{med(valid):.3f}** of {len(valid)} of {len(values)} rounds"
for (p, proto, mode), rounds in groups.items():
    print(f"\nGET {p}, {proto}, {mode}")
    if mode == "throughput":
        print(f"| round | order | {a_name} req/s | {b_name} req/s | ratio | load avg |")
        print("|---|---|---|---|---|---|")
        ratios = []
        for rnd, order, a, b, load in rounds:
            x, y = float(a[0]) if a else 0.0, float(b[0]) if b else 0.0
            valid = x > 0 and y > 0
            ratios.append(ratio(x, y) if valid else float("nan"))
            shown = f"{ratios[-1]:.3f}" if valid else "left out: a side failed"
            print(f"| {rnd} | {order} | {x:,.0f} | {y:,.0f} | {shown} | {load} |")
        xs = [float(r[2][0]) for r in rounds if r[2]] or [0.0]
        ys = [float(r[3][0]) for r in rounds if r[3]] or [0.0]
        print(f"| median | | {med(xs):,.0f} | {med(ys):,.0f} | {median_line(ratios)} | |")
    else:
        print(f"| round | order | {a_name} req/s, p50 / p90 / p99 / p99.9 / max us | "
              f"{b_name} req/s, p50 / p90 / p99 / p99.9 / max us | p50 ratio | p99 ratio | load avg |")
        print("|---|---|---|---|---|---|---|")
        p50s, p99s = [], []
        def held(v):
            return bool(v) and float(v[0]) >= 0.95 * rate
        def cell(v):
            if not v:
                return "failed"
            mark = "" if held(v) else " (**rate not held**)"
            return f"{float(v[0]):,.0f}{mark}: " + " / ".join(f"{int(float(x)):,}" for x in v[1:])
        for rnd, order, a, b, load in rounds:
            valid = held(a) and held(b)
            if valid:
                fa, fb = [float(x) for x in a], [float(x) for x in b]
                p50s.append(ratio(fa[1], fb[1]))
                p99s.append(ratio(fa[3], fb[3]))
                shown = f"{p50s[-1]:.3f} | {p99s[-1]:.3f}"
            else:
                p50s.append(float("nan"))
                p99s.append(float("nan"))
                shown = "left out | left out"
            print(f"| {rnd} | {order} | {cell(a)} | {cell(b)} | {shown} | {load} |")
        def medians(side):
            rows = [[float(x) for x in r[side]] for r in rounds if r[side]]
            return [med(c) for c in zip(*rows)] if rows else []
        print(f"| median | | {cell(medians(2))} | {cell(medians(3))} | {median_line(p50s)} | {median_line(p99s)} | |")
PY
