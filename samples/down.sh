#!/usr/bin/env bash
# Remove the sample services created by samples/deploy.sh.
#
# Usage: samples/down.sh [cpu|memory]   (default: both kinds)
set -euo pipefail

kind="${1:-}"
case "$kind" in
    "") filter="label=swarm-registry.sample" ;;
    cpu | memory) filter="label=swarm-registry.sample=$kind" ;;
    *)
        echo "usage: $0 [cpu|memory]" >&2
        exit 2
        ;;
esac

names="$(docker service ls --quiet --filter "$filter" --format '{{.Name}}')"
if [ -z "$names" ]; then
    echo "no sample services to remove"
    exit 0
fi
for name in $names; do
    docker service rm "$name" >/dev/null
    echo "removed $name"
done
