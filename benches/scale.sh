#!/usr/bin/env bash
# The scale curves (benches/scale/curves.rs): builds the simulated engine and runs the bench
# program in release. Settings are environment variables (see the program's header), e.g.
#   SCALE_SERVICES=0,100,1000 SCALE_ONLY=services benches/scale.sh
# Tables go to stdout and docs/bench/scale-curves.md, curves to docs/bench/*.svg.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cargo build --release -p engine-sim --bin swarm-engine-sim
cargo bench --bench scale_curves
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
