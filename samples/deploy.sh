#!/usr/bin/env bash
# Deploy a sample stack on the local swarm: the registry, RabbitMQ 4 with streams, and
# labelled services to scale.
#
# Usage: samples/deploy.sh <cpu|memory> [image] [tag]
#
#   cpu     stack autoscale-cpu (samples/swarm-stack-cpu.yml): services web and worker,
#           threshold 50 %, between 2 and 5 replicas; the worker spins at its 0.75 CPU limit.
#   memory  stack autoscale-memory (samples/swarm-stack-memory.yml): service hog holding about
#           100 MB of a 256 MiB limit, autoscaler.memory.limit_bytes=268435456.
#   image, tag  the registry image (default: $SUITE_IMAGE or swarm-registry, $SUITE_TAG or
#           latest); build one with scripts/build-image.
#
# Secrets (created once, kept in $SECRETS_DIR, default /var/lib/swarm-registry/<stack>):
# api_token (the bearer token POST endpoints need) and rabbitmq_url. Other variables:
# REGISTRY_PORT (published port, default 5001), RABBITMQ_IMAGE, SAMPLE_IMAGE.
# Remove everything the stack created with samples/down.sh <kind>.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

fail() {
    echo "deploy.sh: $*" >&2
    exit 1
}

kind="${1:-}"
case "$kind" in
    cpu | memory) ;;
    *)
        echo "usage: $0 <cpu|memory> [image] [tag]" >&2
        exit 2
        ;;
esac
stack="autoscale-$kind"
export SUITE_IMAGE="${2:-${SUITE_IMAGE:-swarm-registry}}"
export SUITE_TAG="${3:-${SUITE_TAG:-latest}}"
export SECRETS_DIR="${SECRETS_DIR:-/var/lib/swarm-registry/$stack}"
export REGISTRY_PORT="${REGISTRY_PORT:-5001}"

command -v docker >/dev/null 2>&1 || fail "docker not found: install Docker and make this host a swarm manager"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer (is dockerd running, may this user use it?)"
[ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] \
    || fail "this engine is not a swarm manager: run it on a manager (or 'docker swarm init' first)"

mkdir -p "$SECRETS_DIR"
chmod 700 "$SECRETS_DIR"
if [ ! -s "$SECRETS_DIR/api_token" ]; then
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$SECRETS_DIR/api_token"
    echo "wrote a new API token to $SECRETS_DIR/api_token"
fi
if [ ! -s "$SECRETS_DIR/rabbitmq_url" ]; then
    printf '%s' 'rabbitmq-stream://guest:guest@rabbitmq:5552/%2f' >"$SECRETS_DIR/rabbitmq_url"
fi
chmod 600 "$SECRETS_DIR/api_token" "$SECRETS_DIR/rabbitmq_url"

# An image present on this engine is used as it is (asking a registry for its digest would
# fail for a locally built one); any other is resolved and pulled by the swarm.
resolve=always
if docker image inspect "$SUITE_IMAGE:$SUITE_TAG" >/dev/null 2>&1; then
    resolve=never
fi

cd "$here"
docker stack deploy --resolve-image "$resolve" -c "swarm-stack-$kind.yml" "$stack"
echo "deployed $stack: registry on http://localhost:$REGISTRY_PORT (try: curl -s localhost:$REGISTRY_PORT/services)"
echo "POST endpoints need: Authorization: Bearer \$(cat $SECRETS_DIR/api_token)"
