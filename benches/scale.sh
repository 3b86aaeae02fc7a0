#!/usr/bin/env bash
# The scale curves (benches/scale/curves.rs): builds the simulated engine and runs the bench
# program in release. Settings are environment variables (see the program's header), e.g.
#   SCALE_SERVICES=0,100,1000 SCALE_ONLY=services benches/scale.sh
# Tables go to stdout and docs/bench/scale-{services,subscribers}.md, curves to docs/bench/*.svg.
#
#   benches/scale.sh nginx [SERVICES] [nginx-ab.sh options...]
# instead runs the registry against the simulated engine with SERVICES (default 10000)
# labelled services, churn off, and compares GET /services/{name} with nginx serving the same
# bytes (benches/nginx-ab.sh: paired rounds, order alternated, median ratio). REGISTRY_BIN
# names a registry binary already built (default: the release build of this tree).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cargo build --release -p engine-sim --bin swarm-engine-sim

if [ "${1:-}" != nginx ]; then
    cargo bench --bench scale_curves
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    exit 0
fi
shift
SERVICES=${1:-10000}
[ "$#" -gt 0 ] && shift
# REGISTRY_BIN: a registry binary already built (else the release build of this tree).
if [ -z "${REGISTRY_BIN:-}" ]; then
    cargo build --release --bin swarm-registry
    REGISTRY_BIN=target/release/swarm-registry
fi
WORK=$(mktemp -d)
cleanup() {
    for pid in "${REGISTRY_PID:-}" "${ENGINE_PID:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
target/release/swarm-engine-sim --services "$SERVICES" --labelled-share 1.0 --churn 0 \
    >"$WORK/engine.out" 2>&1 &
ENGINE_PID=$!
for _ in $(seq 100); do
    [ -s "$WORK/engine.out" ] && break
    sleep 0.1
done
ENGINE_URL=$(head -1 "$WORK/engine.out" | sed -n 's/^swarm-engine-sim listening on //p')
[ -n "$ENGINE_URL" ] || { echo "scale: the simulated engine did not start" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" HOST=127.0.0.1 PORT="$PORT" DOCKER_BASE_URL="$ENGINE_URL" LOG_LEVEL=warn \
    CGROUP_ROOT=/nonexistent-cgroup-root NODE_SAMPLE_INTERVAL_MS=600000 METRICS_REFRESH_INTERVAL_SEC=600 \
    "$REGISTRY_BIN" >"$WORK/registry.out" 2>&1 &
REGISTRY_PID=$!
NAME=""
for _ in $(seq 600); do
    NAME=$(curl -sf "http://127.0.0.1:$PORT/services" | python3 -c '
import json, sys
services = json.load(sys.stdin)["services"]
print(services[len(services) // 2]["name"] if len(services) >= int(sys.argv[1]) else "")
' "$SERVICES" 2>/dev/null || true)
    [ -n "$NAME" ] && break
    sleep 0.2
done
[ -n "$NAME" ] || { echo "scale: the registry did not list $SERVICES services" >&2; cat "$WORK/registry.out" >&2; exit 1; }
echo "registry at http://127.0.0.1:$PORT with $SERVICES services, commit $(git rev-parse --short HEAD)"
benches/nginx-ab.sh --registry "http://127.0.0.1:$PORT" --path "/services/$NAME" "$@"
