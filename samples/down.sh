#!/usr/bin/env bash
# Remove a sample stack deployed by samples/deploy.sh: its services, network, configs and
# secrets, and nothing else; waits until they are gone.
#
# Usage: samples/down.sh [cpu|memory|all]     (default: all)
set -euo pipefail

fail() {
    echo "down.sh: $*" >&2
    exit 1
}

case "${1:-all}" in
    cpu) stacks=(autoscale-cpu) ;;
    memory) stacks=(autoscale-memory) ;;
    all) stacks=(autoscale-cpu autoscale-memory) ;;
    *)
        echo "usage: $0 [cpu|memory|all]" >&2
        exit 2
        ;;
esac

command -v docker >/dev/null 2>&1 || fail "docker not found"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer (is dockerd running?)"
[ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] \
    || fail "this engine is not a swarm manager: run it on a manager"

# Whatever still carries the stack's namespace label.
leftovers() {
    local stack="$1" filter="label=com.docker.stack.namespace=$1"
    docker service ls -q --filter "$filter"
    docker network ls -q --filter "$filter"
    docker config ls -q --filter "$filter"
    docker secret ls -q --filter "$filter"
    # Task containers linger for a moment after their service is removed; the network goes
    # only after them.
    docker ps -aq --filter "$filter"
}

for stack in "${stacks[@]}"; do
    if [ -z "$(docker service ls -q --filter "label=com.docker.stack.namespace=$stack")" ] \
        && [ -z "$(leftovers "$stack")" ]; then
        echo "$stack: nothing deployed"
        continue
    fi
    docker stack rm "$stack" >/dev/null
    deadline=$((SECONDS + 120))
    while [ -n "$(leftovers "$stack")" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "$stack: still present after 120 s: $(leftovers "$stack" | tr '\n' ' ')"
        fi
        # A network removal can fail while the last task is stopping: ask again.
        docker network rm $(docker network ls -q --filter "label=com.docker.stack.namespace=$stack") >/dev/null 2>&1 || true
        sleep 1
    done
    echo "$stack: removed"
done
