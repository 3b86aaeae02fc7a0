//! The `swarm-registry` binary: reads configuration, starts the pipeline and its edges.

fn main() {}
