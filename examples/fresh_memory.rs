//! What touching fresh memory costs on this machine: the part of a cold load
//! that no baseline of `scripts/bench-load-path.sh` pays (openssl hashes
//! through a small buffer, `ort_floor` maps the page cache), while the router
//! copies each model into private memory of its size.
//!
//! ```text
//! cargo run --release --example fresh_memory -- [MIB] [IDLE_SECONDS]
//! ```
//!
//! Maps `MIB` (128) MiB of anonymous memory three times, advised
//! `MADV_HUGEPAGE` as `src/repository/fetch.rs` does, and writes a byte per
//! 4 KiB page: twice back to back, then once more after `IDLE_SECONDS` (8) with
//! nothing allocated; then the same in 4 KiB pages. In a VM whose balloon
//! reports free pages to the host (virtio-balloon free page reporting), free
//! 2 MiB blocks go back to the host within seconds, and the first touch of one
//! then waits on the host: the touch after the idle spell is several times
//! slower than the back-to-back ones. Elsewhere the three are alike.

use std::time::{Duration, Instant};

use memmap2::{Advice, MmapOptions};

fn touch(bytes: usize, huge: bool) -> f64 {
    let started = Instant::now();
    let mut memory = MmapOptions::new()
        .len(bytes)
        .map_anon()
        .expect("anonymous memory");
    if huge {
        let _ = memory.advise(Advice::HugePage);
    }
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    let took = started.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(&memory);
    took
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(128, |a| a.parse().expect("MiB"));
    let idle: u64 = args.next().map_or(8, |a| a.parse().expect("seconds"));
    let bytes = mib << 20;
    for (label, huge) in [("huge pages", true), ("4 KiB pages", false)] {
        let first = touch(bytes, huge);
        let second = touch(bytes, huge);
        std::thread::sleep(Duration::from_secs(idle));
        let after_idle = touch(bytes, huge);
        println!(
            "  touching {mib} MiB of fresh memory, {label:11}: {first:6.1} and {second:6.1} ms back to back, {after_idle:6.1} ms after {idle} s idle"
        );
    }
}
