//! The EFS-like test filesystem itself (tests/support/efs_sim.rs), through a
//! real FUSE mount: bytes, latency, overlap of reads in flight, the shared
//! ceiling, every fault, and the counters. Timings are only ever asserted as
//! lower bounds the simulator must respect, or with margins of several times,
//! so a slow machine cannot make them fail.

#[path = "support/efs_sim.rs"]
mod efs_sim;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use efs_sim::{EfsSim, Fault, FileStats, Options};

const MIB: usize = 1 << 20;
const MODEL: &str = "m/1/model.ort";

/// Deterministic, incompressible-looking bytes (xorshift64), different per seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A source directory with `m/1/model.ort` of `len` bytes, mounted. Fields
/// drop in order: the mount before the directories under it.
struct Mounted {
    sim: EfsSim,
    source: tempfile::TempDir,
    _mountpoint: tempfile::TempDir,
    model: Vec<u8>,
}

impl Mounted {
    fn new(len: usize, options: Options) -> Mounted {
        let source = tempfile::tempdir().unwrap();
        fs::create_dir_all(source.path().join("m/1")).unwrap();
        let model = pattern(len, 1);
        fs::write(source.path().join(MODEL), &model).unwrap();
        let mountpoint = tempfile::tempdir().unwrap();
        let sim = EfsSim::mount(source.path(), mountpoint.path(), options).unwrap();
        Mounted {
            sim,
            source,
            _mountpoint: mountpoint,
            model,
        }
    }

    fn add(&self, relative: &str, bytes: &[u8]) {
        let path = self.source.path().join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn read(&self, relative: &str) -> std::io::Result<Vec<u8>> {
        fs::read(self.sim.path(relative))
    }
}

fn latency(ms: u64) -> Options {
    Options {
        latency: Duration::from_millis(ms),
        ..Options::default()
    }
}

fn os_error(result: std::io::Result<impl std::fmt::Debug>) -> i32 {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}")),
    }
}

#[test]
fn serves_the_source_read_only_and_counts_what_it_read() {
    if !efs_sim::usable_or_skip("serves_the_source_read_only_and_counts_what_it_read") {
        return;
    }
    let m = Mounted::new(3 * MIB + 123, latency(1));
    m.add("m/2/small.bin", b"hello");
    std::os::unix::fs::symlink("1/model.ort", m.source.path().join("m/latest")).unwrap();

    assert_eq!(m.read(MODEL).unwrap(), m.model);
    assert_eq!(
        m.sim.stats(MODEL),
        FileStats {
            opens: 1,
            bytes_read: m.model.len() as u64,
            ..m.sim.stats(MODEL)
        },
        "one open, every byte read once"
    );
    assert!(m.sim.stats(MODEL).reads >= 1);
    assert!(m.sim.stats(MODEL).metadata_ops >= 1);

    // No keep-cache: a second open reads through the mount again.
    assert_eq!(m.read(MODEL).unwrap(), m.model);
    assert_eq!(m.sim.stats(MODEL).opens, 2);
    assert_eq!(m.sim.stats(MODEL).bytes_read, 2 * m.model.len() as u64);

    let mut names: Vec<_> = fs::read_dir(m.sim.path("m"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["1", "2", "latest"]);
    assert_eq!(
        fs::read_link(m.sim.path("m/latest")).unwrap(),
        Path::new("1/model.ort")
    );
    assert_eq!(fs::read(m.sim.path("m/latest")).unwrap(), m.model);
    assert_eq!(m.read("m/2/small.bin").unwrap(), b"hello");
    let metadata = fs::metadata(m.sim.path(MODEL)).unwrap();
    assert_eq!(metadata.len(), m.model.len() as u64);
    assert_eq!(
        os_error(fs::metadata(m.sim.path("m/3"))),
        libc::ENOENT,
        "a missing path"
    );
    assert!(rustix::fs::statvfs(m.sim.mountpoint()).unwrap().f_blocks > 0);

    assert_eq!(os_error(File::create(m.sim.path("m/new"))), libc::EROFS);
    assert_eq!(
        os_error(fs::OpenOptions::new().append(true).open(m.sim.path(MODEL))),
        libc::EROFS
    );
    assert_eq!(os_error(fs::remove_file(m.sim.path(MODEL))), libc::EROFS);
    assert_eq!(fs::read(m.source.path().join(MODEL)).unwrap(), m.model);

    m.sim.reset_stats();
    assert_eq!(m.sim.stats(MODEL), FileStats::default());
}

#[test]
fn every_round_trip_waits_the_latency() {
    if !efs_sim::usable_or_skip("every_round_trip_waits_the_latency") {
        return;
    }
    let m = Mounted::new(4096, latency(20));
    let opens = 5;
    let started = Instant::now();
    for _ in 0..opens {
        File::open(m.sim.path(MODEL)).unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!("{opens} opens at 20 ms: {elapsed:?}");
    // Each open is at least the open itself (lookups come on top).
    assert!(
        elapsed >= Duration::from_millis(20) * opens,
        "{opens} opens at 20 ms took {elapsed:?}"
    );
    assert_eq!(m.sim.stats(MODEL).opens, u64::from(opens));
}

#[test]
fn reads_in_flight_overlap_their_latency() {
    if !efs_sim::usable_or_skip("reads_in_flight_overlap_their_latency") {
        return;
    }
    let latency_ms = 100;
    let threads = 8;
    let m = Mounted::new(threads * MIB, latency(latency_ms));
    // Open first (untimed), so only the reads are measured.
    let files: Vec<File> = (0..threads)
        .map(|_| File::open(m.sim.path(MODEL)).unwrap())
        .collect();
    let started = Instant::now();
    let chunks: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let readers: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                scope.spawn(move || {
                    let mut chunk = vec![0; MIB];
                    file.read_exact_at(&mut chunk, (i * MIB) as u64).unwrap();
                    chunk
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    eprintln!("{threads} parallel 1 MiB reads at {latency_ms} ms: {elapsed:?}");
    for (i, chunk) in chunks.iter().enumerate() {
        assert!(chunk[..] == m.model[i * MIB..(i + 1) * MIB], "chunk {i}");
    }
    // Served one after another, 8 reads would take at least 8 round trips;
    // overlapped they take about one or two. Half of serial is a wide margin.
    let serial = Duration::from_millis(latency_ms) * threads as u32;
    assert!(
        elapsed < serial / 2,
        "{threads} parallel 1 MiB reads at {latency_ms} ms took {elapsed:?} (serial: >= {serial:?})"
    );
}

#[test]
fn all_reads_share_one_throughput_ceiling() {
    if !efs_sim::usable_or_skip("all_reads_share_one_throughput_ceiling") {
        return;
    }
    let bytes_per_sec = 16_000_000;
    let m = Mounted::new(
        2 * MIB,
        Options {
            bytes_per_sec: Some(bytes_per_sec),
            ..Options::default()
        },
    );
    let other = pattern(2 * MIB, 2);
    m.add("m/2/model.ort", &other);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let a = scope.spawn(|| m.read(MODEL).unwrap());
        let b = scope.spawn(|| m.read("m/2/model.ort").unwrap());
        assert!(a.join().unwrap() == m.model);
        assert!(b.join().unwrap() == other);
    });
    let elapsed = started.elapsed();
    eprintln!("2 x 2 MiB at 16 MB/s: {elapsed:?}");
    // Two readers, one link: 4 MiB at 16 MB/s cannot arrive in under 262 ms.
    let floor = Duration::from_secs_f64((4 * MIB) as f64 / bytes_per_sec as f64);
    assert!(
        elapsed >= floor,
        "4 MiB at 16 MB/s took {elapsed:?} (< {floor:?})"
    );
}

#[test]
fn eio_at_an_offset_fails_reads_covering_it_until_cleared() {
    if !efs_sim::usable_or_skip("eio_at_an_offset_fails_reads_covering_it_until_cleared") {
        return;
    }
    let m = Mounted::new(8 * MIB, latency(1));
    m.sim.set_fault(MODEL, Fault::EioAt((6 * MIB + 5) as u64));
    let mut file = File::open(m.sim.path(MODEL)).unwrap();
    let mut head = vec![0; 2 * MIB];
    file.read_exact(&mut head).unwrap();
    assert!(
        head[..] == m.model[..2 * MIB],
        "bytes before the fault read fine"
    );
    assert_eq!(os_error(m.read(MODEL)), libc::EIO);
    m.sim.clear_faults();
    assert_eq!(m.read(MODEL).unwrap(), m.model);
}

#[test]
fn truncate_at_shortens_the_file_under_the_reader() {
    if !efs_sim::usable_or_skip("truncate_at_shortens_the_file_under_the_reader") {
        return;
    }
    let m = Mounted::new(8 * MIB, latency(1));
    let at = 3 * MIB;
    m.sim.set_fault(MODEL, Fault::TruncateAt(at as u64));
    let read = m.read(MODEL).unwrap();
    assert!(read.len() < m.model.len(), "the read came back short");
    assert!(
        read.len() >= at && read[..at] == m.model[..at],
        "{} bytes",
        read.len()
    );
    // Read-ahead already in flight past the new end can come back short after
    // the kernel has taken a newer size; FUSE fills those pages with zeros.
    assert!(
        read[at..].iter().all(|&b| b == 0),
        "past the new end: zeros"
    );
    let source = fs::read(m.source.path().join(MODEL)).unwrap();
    assert!(source[..] == m.model[..at], "the source was truncated");
    assert!(
        m.read(MODEL).unwrap()[..] == m.model[..at],
        "later reads short too"
    );
}

#[test]
fn rewrite_at_replaces_the_bytes_from_the_offset() {
    if !efs_sim::usable_or_skip("rewrite_at_replaces_the_bytes_from_the_offset") {
        return;
    }
    let m = Mounted::new(4 * MIB, latency(1));
    let at = MIB + 7;
    m.sim.set_fault(MODEL, Fault::RewriteAt(at as u64));
    let read = m.read(MODEL).unwrap();
    let mut rewritten = m.model.clone();
    rewritten[at..].iter_mut().for_each(|b| *b = !*b);
    assert_eq!(read.len(), m.model.len(), "same length");
    assert!(
        read[..at] == m.model[..at],
        "bytes before the offset unchanged"
    );
    assert!(read == rewritten, "bytes from the offset rewritten");
    assert!(fs::read(m.source.path().join(MODEL)).unwrap() == rewritten);
    // It acts once: a second read sees the same (not twice inverted) bytes.
    assert!(m.read(MODEL).unwrap() == rewritten);
}

#[test]
fn vanish_at_gives_estale_then_enoent_until_cleared() {
    if !efs_sim::usable_or_skip("vanish_at_gives_estale_then_enoent_until_cleared") {
        return;
    }
    let m = Mounted::new(4 * MIB, latency(1));
    m.sim.set_fault(MODEL, Fault::VanishAt((2 * MIB) as u64));
    assert!(fs::metadata(m.sim.path(MODEL)).is_ok(), "there until read");
    let mut file = File::open(m.sim.path(MODEL)).unwrap();
    let mut head = vec![0; 4096];
    file.read_exact(&mut head).unwrap();
    assert!(
        head[..] == m.model[..4096],
        "bytes before the offset read fine"
    );
    let mut rest = Vec::new();
    assert_eq!(os_error(file.read_to_end(&mut rest)), libc::ESTALE);
    assert_eq!(os_error(fs::metadata(m.sim.path(MODEL))), libc::ENOENT);
    assert_eq!(os_error(File::open(m.sim.path(MODEL))), libc::ENOENT);
    let listed = fs::read_dir(m.sim.path("m/1")).unwrap().count();
    assert_eq!(listed, 0, "gone from its directory too");
    m.sim.clear_faults();
    assert_eq!(m.read(MODEL).unwrap(), m.model);
}

#[test]
fn hang_open_delays_only_that_file() {
    if !efs_sim::usable_or_skip("hang_open_delays_only_that_file") {
        return;
    }
    let m = Mounted::new(64 * 1024, latency(1));
    m.add("m/2/model.ort", b"other model");
    let hang = Duration::from_secs(2);
    m.sim.set_fault(MODEL, Fault::HangOpen(hang));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let hung = scope.spawn(|| {
            let bytes = m.read(MODEL).unwrap();
            (bytes, started.elapsed())
        });
        // Give the hung open a head start, then read another file meanwhile.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(m.read("m/2/model.ort").unwrap(), b"other model");
        let other_done = started.elapsed();
        let (bytes, hung_done) = hung.join().unwrap();
        assert_eq!(bytes, m.model, "the hung open answers in the end");
        assert!(hung_done >= hang, "the open waited: {hung_done:?}");
        assert!(
            other_done < hung_done,
            "another file answered ({other_done:?}) while the open hung ({hung_done:?})"
        );
    });
}

#[test]
fn hang_read_delays_every_read_then_answers() {
    if !efs_sim::usable_or_skip("hang_read_delays_every_read_then_answers") {
        return;
    }
    let m = Mounted::new(4096, latency(1));
    let hang = Duration::from_millis(300);
    m.sim.set_fault(MODEL, Fault::HangRead(hang));
    let file = File::open(m.sim.path(MODEL)).unwrap();
    let started = Instant::now();
    let mut bytes = vec![0; 4096];
    file.read_exact_at(&mut bytes, 0).unwrap();
    assert!(started.elapsed() >= hang, "took {:?}", started.elapsed());
    assert_eq!(bytes, m.model);
}
