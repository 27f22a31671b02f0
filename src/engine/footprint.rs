//! What a loaded model costs in memory, counted by the allocator (see
//! [`LoadedModel::footprint_bytes`](super::LoadedModel::footprint_bytes)), and
//! the process-wide memory figures the admin `status` and the benchmarks show.
//!
//! jemalloc is the process's allocator (src/lib.rs), unprefixed, so ONNX
//! Runtime's C++ allocations (`operator new` -> `malloc`) go through it too.
//! It keeps, for every thread, the bytes that thread ever allocated and ever
//! freed. The difference over a window in which one thread creates a session
//! is what that session kept, whatever other threads (other loads, runs on
//! other models) allocate or free meanwhile; RssAnon deltas, the earlier
//! measure, took in every other thread's activity and missed memory the
//! allocator reused.

use tikv_jemalloc_ctl::{epoch, stats, thread};

use super::ModelFormat;

/// The calling thread's allocation counters at one moment; see [`ThreadMeter::kept_bytes`].
///
/// ```
/// use model_router::engine::ThreadMeter;
///
/// let meter = ThreadMeter::start();
/// let kept = vec![1u8; 1 << 20];
/// let freed = vec![2u8; 4 << 20];
/// drop(freed);
/// let bytes = meter.kept_bytes();
/// assert!(bytes >= 1 << 20 && bytes < 2 << 20, "{bytes}");
/// # drop(kept);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ThreadMeter {
    allocated: u64,
    deallocated: u64,
}

/// `(allocated, deallocated)` bytes of the calling thread, ever; zeros where
/// jemalloc's statistics are unavailable (then every meter reads 0).
fn thread_counts() -> (u64, u64) {
    let allocated = thread::allocatedp::read().map(|p| p.get()).unwrap_or(0);
    let deallocated = thread::deallocatedp::read().map(|p| p.get()).unwrap_or(0);
    (allocated, deallocated)
}

impl ThreadMeter {
    /// Starts counting on the calling thread.
    pub fn start() -> ThreadMeter {
        let (allocated, deallocated) = thread_counts();
        ThreadMeter {
            allocated,
            deallocated,
        }
    }

    /// Bytes the calling thread allocated since [`ThreadMeter::start`] and has
    /// not freed (0 if it freed more than it allocated). Must be read on the
    /// thread that started the meter. jemalloc counts each allocation by its
    /// size class (what it really takes), not by the size asked for.
    pub fn kept_bytes(&self) -> u64 {
        let (allocated, deallocated) = thread_counts();
        let allocated = allocated.saturating_sub(self.allocated);
        let deallocated = deallocated.saturating_sub(self.deallocated);
        allocated.saturating_sub(deallocated)
    }
}

impl ThreadMeter {
    /// Bytes the calling thread allocated since [`ThreadMeter::start`],
    /// whatever it freed since: an upper bound of its peak use.
    pub fn allocated_bytes(&self) -> u64 {
        thread_counts().0.saturating_sub(self.allocated)
    }
}

/// The calling thread's peak of bytes allocated and not yet freed since
/// [`ThreadPeak::start`] (jemalloc's `thread.peak`): what a computation
/// needed at its worst moment, not only what it kept.
///
/// ```
/// use model_router::engine::ThreadPeak;
///
/// let peak = ThreadPeak::start();
/// drop(vec![1u8; 4 << 20]);
/// let bytes = peak.peak_bytes();
/// assert!(bytes >= 4 << 20 && bytes < 5 << 20, "{bytes}");
/// ```
#[derive(Debug)]
pub struct ThreadPeak {
    /// Read on the thread that started it: jemalloc's counters are per thread.
    _same_thread: std::marker::PhantomData<*const ()>,
}

impl ThreadPeak {
    /// jemalloc updates the peak when it is read and after every 64 KiB
    /// allocated (or freed) in between, so the true peak is less than this
    /// above what [`ThreadPeak::peak_bytes`] reads.
    pub const SAMPLING_BYTES: u64 = 64 << 10;

    /// Starts measuring on the calling thread (its current use is the zero).
    pub fn start() -> ThreadPeak {
        // SAFETY: `thread.peak.reset` is a void control: all four pointers
        // are null and the length 0, as jemalloc requires of one; the name is
        // a NUL-terminated static.
        let _ = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.peak.reset".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        ThreadPeak {
            _same_thread: std::marker::PhantomData,
        }
    }

    /// The peak so far, in bytes above the use at [`ThreadPeak::start`]
    /// (0 where jemalloc's statistics are unavailable).
    pub fn peak_bytes(&self) -> u64 {
        let mut peak: u64 = 0;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: `thread.peak.read` writes one uint64_t to `oldp`, whose
        // size `oldlenp` gives, and takes no new value (null, length 0).
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.peak.read".as_ptr(),
                (&mut peak as *mut u64).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        if rc == 0 { peak } else { 0 }
    }
}

/// The footprint rule documented on `LoadedModel::footprint_bytes`: the bytes
/// the loading thread kept, plus the mapped file for `.ort` (the session reads
/// its weights in place; its pages are resident once used).
pub(super) fn footprint_bytes(format: ModelFormat, mapped_bytes: u64, kept: u64) -> u64 {
    match format {
        ModelFormat::Ort => mapped_bytes.saturating_add(kept),
        ModelFormat::Onnx => kept,
    }
}

/// The process's memory as the allocator and the kernel see it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcessMemory {
    /// Bytes allocated and not freed (jemalloc `stats.allocated`): Rust and
    /// ONNX Runtime alike.
    pub allocated_bytes: u64,
    /// Bytes in pages jemalloc holds resident (`stats.resident`): allocated,
    /// plus its metadata and freed pages not yet returned.
    pub allocator_resident_bytes: u64,
    /// `VmRSS` of /proc/self/status: everything resident, file-backed pages of
    /// mapped models and libraries included.
    pub rss_bytes: u64,
    /// `RssAnon`: the anonymous part of `VmRSS`.
    pub rss_anon_bytes: u64,
}

/// Reads [`ProcessMemory`] now (zeros for what cannot be read).
pub fn process_memory() -> ProcessMemory {
    // jemalloc's totals are a snapshot refreshed by advancing the epoch.
    let _ = epoch::advance();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    ProcessMemory {
        allocated_bytes: stats::allocated::read().unwrap_or(0) as u64,
        allocator_resident_bytes: stats::resident::read().unwrap_or(0) as u64,
        rss_bytes: status_kib(&status, "VmRSS:").unwrap_or(0),
        rss_anon_bytes: status_kib(&status, "RssAnon:").unwrap_or(0),
    }
}

/// Gives the pages of freed memory back to the system now, rather than after
/// jemalloc's decay time: after an eviction, so that resident memory follows
/// the cache down.
pub fn release_free_memory() {
    // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena. 4096 is jemalloc's
    // MALLCTL_ARENAS_ALL.
    // SAFETY: `arena.N.purge` is a void control: all four pointers are null
    // and the length 0, as jemalloc requires of one (it reads and writes
    // nothing); the name is a NUL-terminated static.
    let _ = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
}

/// The process's anonymous resident memory (`RssAnon` in `/proc/self/status`),
/// in bytes; `None` where that cannot be read (not Linux, no `/proc`).
///
/// ```
/// if cfg!(target_os = "linux") {
///     assert!(model_router::engine::anon_rss_bytes().unwrap() > 0);
/// }
/// ```
pub fn anon_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_kib(&status, "RssAnon:")
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix(field))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields_from_proc_status() {
        let status = "Name:\tx\nVmRSS:\t  2048 kB\nRssAnon:\t    1500 kB\nRssFile:\t 548 kB\n";
        assert_eq!(status_kib(status, "RssAnon:"), Some(1500 * 1024));
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(status_kib("VmRSS:\t 2048 kB\n", "RssAnon:"), None);
    }

    #[test]
    fn footprint_counts_the_mapping_for_ort_only() {
        let mib = 1 << 20;
        assert_eq!(
            footprint_bytes(ModelFormat::Ort, 100 * mib, 3 * mib),
            103 * mib
        );
        assert_eq!(
            footprint_bytes(ModelFormat::Onnx, 100 * mib, 140 * mib),
            140 * mib
        );
    }

    #[test]
    fn a_meter_sees_only_its_own_thread() {
        let meter = ThreadMeter::start();
        // Another thread's allocation, kept alive past the reading.
        let other = std::thread::spawn(|| vec![0u8; 8 << 20]).join().unwrap();
        let mine = vec![1u8; 1 << 20];
        let kept = meter.kept_bytes();
        assert!((1 << 20..2 << 20).contains(&kept), "{kept}");
        drop((other, mine));
        assert!(process_memory().allocated_bytes > 0);
    }
}
