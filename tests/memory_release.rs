//! The registry hands freed heap back to the system (`swarm_registry::memory`): a trim after a
//! large transient load returns the free pages it left among live allocations. Resident
//! memory is read from /proc/self/statm. One test in its own process, so no other test
//! allocates meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use swarm_registry::memory::return_free_pages;

const MIB: usize = 1024 * 1024;

/// Resident bytes of this process.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A buffer of `len` bytes, every page touched, so it is resident.
fn touched(len: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; len];
    for byte in buffer.iter_mut().step_by(4096) {
        *byte = 1;
    }
    std::hint::black_box(buffer)
}

#[test]
fn free_pages_among_live_blocks_go_back_to_the_system() {
    // Many small blocks, one in sixteen kept: what is freed lies between live blocks, where
    // free() alone returns nothing.
    let before = resident();
    let blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| touched(4000)).collect();
    let kept: Vec<Vec<u8>> = blocks
        .into_iter()
        .enumerate()
        .filter_map(|(i, block)| (i % 16 == 0).then_some(block))
        .collect();
    let fragmented = resident();
    assert!(
        fragmented >= before + 48 * MIB,
        "the freed blocks stay resident before a trim: {} MiB then {} MiB",
        before / MIB,
        fragmented / MIB
    );
    return_free_pages();
    let trimmed = resident();
    assert!(
        trimmed + 40 * MIB <= fragmented,
        "the trim returned {} MiB of about 60 free",
        fragmented.saturating_sub(trimmed) / MIB
    );
    drop(std::hint::black_box(kept));
}
