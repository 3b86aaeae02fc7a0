//! Handing the heap's free pages back to the system after a large transient load.
//!
//! A full list of N services is parsed into the engine client's complete model of every
//! service (about 3.5 KiB each), converted, folded and dropped: at 10,000 services that is a
//! peak of about 60 MB of which about 20 MB stays live. glibc's allocator keeps what was freed
//! in its arenas, pinned by the long-lived records allocated among it, so the registry's
//! resident memory stays at the peak for good, and grows with every later list that lands
//! elsewhere in the heap. `malloc_trim(0)` returns every free page of every arena
//! (`MADV_DONTNEED`), whatever lies around it, so resident memory follows what is live.
//!
//! Measured at 10,000 services (BENCHMARKS.md, "Scale curves"): resident memory above the
//! empty registry about 7.7 KiB per service without the trim, 5.7 with it. A fixed mmap
//! threshold (`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072`) brings it to 4.1, since the
//! megabyte buffers of a rendered list are then returned whole when freed; it is left to the
//! operator, as it costs a fresh mapping per rendering: GET /services at 10,000 services under
//! churn answered 0.78x as many requests over HTTP/1.1 with it.
//!
//! Only built for glibc on Linux (the image's runtime); elsewhere it does nothing.

/// Lists at least this long are followed by a trim. Below it the transient load is small
/// against the registry's base, and not worth a pass over the heap.
pub const TRIM_AFTER_LIST_OF: usize = 1_000;

/// Return the heap's free pages to the system. Costs a pass over the arenas (4.7 ms measured
/// for a 64 MiB heap with 60 MiB free in 4 KiB holes), so it runs on the blocking pool, after
/// the event that freed much, not on a timer.
pub fn return_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim has no preconditions: it takes the arenas' own locks and only
    // releases pages that hold no allocation. Any pad value is valid; 0 keeps none back.
    unsafe {
        libc::malloc_trim(0);
    }
}
