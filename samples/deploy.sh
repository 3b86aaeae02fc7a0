#!/usr/bin/env bash
# Create labelled sample services on the local swarm, for trying the registry by hand.
#
# Usage: samples/deploy.sh <cpu|memory> [image]
#
#   cpu     two services (autoscale-cpu_web, autoscale-cpu_worker) with threshold 50,
#           min 2, max 5; the worker keeps its CPU busy (`yes > /dev/null`).
#   memory  one service (autoscale-memory_hog) scaled on memory, holding about 100 MB,
#           with autoscaler.memory.limit_bytes=268435456 and a matching task memory limit.
#
# The image defaults to local/busybox:1 (nothing is pulled: services are created directly
# with `docker service create`, not as a stack). Remove them with samples/down.sh.
set -euo pipefail

kind="${1:-}"
image="${2:-${SAMPLE_IMAGE:-local/busybox:1}}"

usage() {
    echo "usage: $0 <cpu|memory> [image]" >&2
    exit 2
}

# create NAME KIND [docker service create options...] -- COMMAND...
create() {
    local name="$1" kind="$2"
    shift 2
    if docker service inspect "$name" >/dev/null 2>&1; then
        echo "$name already exists; leaving it as it is"
        return
    fi
    local opts=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
        opts+=("$1")
        shift
    done
    shift
    docker service create --detach --quiet --no-resolve-image \
        --name "$name" \
        --label "swarm-registry.sample=$kind" \
        --label autoscaler.enabled=true \
        "${opts[@]}" \
        "$image" "$@" >/dev/null
    echo "created $name"
}

case "$kind" in
    cpu)
        # Both cpu samples scale alike: threshold 50 %, between 2 and 5 replicas.
        scaling=(--replicas 2 --label autoscaler.metric=cpu --label autoscaler.cpu.threshold=50
                 --label autoscaler.min=2 --label autoscaler.max=5)
        create autoscale-cpu_web cpu "${scaling[@]}" -- sleep 1000000
        create autoscale-cpu_worker cpu "${scaling[@]}" -- sh -c 'yes > /dev/null'
        ;;
    memory)
        create autoscale-memory_hog memory \
            --replicas 1 \
            --limit-memory 268435456 \
            --label autoscaler.metric=memory \
            --label autoscaler.memory.threshold=70 \
            --label autoscaler.memory.limit_bytes=268435456 \
            --label autoscaler.min=1 \
            --label autoscaler.max=3 \
            -- sh -c 'hold=$(busybox head -c 104857600 /dev/zero | busybox tr "\0" x); while :; do sleep 3600; done'
        ;;
    *)
        usage
        ;;
esac
