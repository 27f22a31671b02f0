//! An EFS-like filesystem for tests and benchmarks: a read-only FUSE passthrough
//! of a source directory that answers every round trip after a set latency,
//! shares one throughput ceiling between all reads, counts opens and bytes per
//! file, and injects faults per file while it runs.
//!
//! Included by path, not built as a crate, so only the tests and the example
//! that use it pay for `fuser` (a dev-dependency):
//! `#[path = "support/efs_sim.rs"] mod efs_sim;` in `tests/`,
//! `#[path = "../tests/support/efs_sim.rs"] mod efs_sim;` in `examples/efs_sim.rs`.
//! docs/efs-sim.md says what it models and what it does not.
//!
//! How requests flow: fuser's session loop is one thread, so it never waits.
//! Every request that is a round trip on NFS (lookup, getattr, open, read,
//! readdir, readlink, statfs) is queued on a [`Scheduler`] to run after the
//! latency (plus any hang fault) on a small worker pool; a read then reserves
//! its transfer on the shared link (a next-free-time slot, so reads in flight
//! overlap their latency but not their bandwidth) and is answered when its
//! bytes have "arrived". fuser's `Reply*` objects are `Send`, which is what
//! lets a worker answer a request the session loop received.

#![allow(dead_code)] // each includer (tests, the example) uses a different part

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request, SessionACL,
};

/// EFS's `rsize`: the largest read the kernel sends in one request (1 MiB).
/// Also what the mount reports as `st_blksize`, as an NFS mount with that
/// rsize does.
pub const MAX_READ: u32 = 1 << 20;

/// What amazon-efs-utils writes to an EFS mount's `read_ahead_kb` (15 MiB).
pub const EFS_READ_AHEAD: u32 = 15 << 20;

/// Threads that answer delayed requests: each job is a `pread` from the
/// source (page cache) plus one write to /dev/fuse, so a few suffice for
/// hundreds of reads in flight; waiting is done by the scheduler, not by them.
const WORKERS: usize = 4;

/// How the mount behaves. `Options::default()` is a local-speed mount (no
/// latency, no ceiling) with EFS's read-ahead.
#[derive(Clone, Debug)]
pub struct Options {
    /// Added to every round trip (lookup, getattr, open, read, readdir,
    /// readlink, statfs), like an NFS RPC; EFS answers in 1-5 ms. Requests in
    /// flight at once wait it out together, as NFS pipelines RPCs.
    pub latency: Duration,
    /// A throughput ceiling shared by all reads of the mount, in bytes per
    /// second (e.g. 200_000_000), or none.
    pub bytes_per_sec: Option<u64>,
    /// How long the kernel may keep names and attributes it was given. Zero
    /// (the default): every path walk and `stat` is a round trip, as on a cold
    /// client, and a vanished file is seen at once.
    pub attr_ttl: Duration,
    /// The mount's kernel read-ahead in bytes (its bdi `read_ahead_kb`);
    /// defaults to [`EFS_READ_AHEAD`]. FUSE's own default is 128 KiB.
    pub read_ahead: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            latency: Duration::ZERO,
            bytes_per_sec: None,
            attr_ttl: Duration::ZERO,
            read_ahead: EFS_READ_AHEAD,
        }
    }
}

/// A fault of one file, set with [`EfsSim::set_fault`]. Offsets are byte
/// offsets in the file; "a read" is a read request the kernel sends (the
/// kernel's read-ahead may send it before the application reads that far).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every read covering this byte fails with EIO (reads before it succeed).
    EioAt(u64),
    /// Once a read reaches this offset, the source file is truncated to it, as
    /// another client would: that read and later ones come back short.
    TruncateAt(u64),
    /// Once a read reaches this offset, the source file's bytes from there on
    /// are overwritten with different bytes (each byte inverted), same length.
    RewriteAt(u64),
    /// Once a read reaches this offset the file counts as removed by another
    /// client: that read and every later read, open or getattr of it fail with
    /// ESTALE (NFS's answer for a removed file) and lookups give ENOENT.
    VanishAt(u64),
    /// Every open of the file waits this long (on top of the latency).
    HangOpen(Duration),
    /// Every read of the file waits this long (on top of the latency).
    HangRead(Duration),
}

/// What the mount served for one file (path relative to the source).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Opens asked for (answered or not).
    pub opens: u64,
    /// Read requests answered with data.
    pub reads: u64,
    /// Bytes those reads returned.
    pub bytes_read: u64,
    /// Lookups and getattrs of the path: the metadata round trips.
    pub metadata_ops: u64,
}

/// Whether this machine can mount the simulator: /dev/fuse usable, and
/// `fusermount3` present (fuser mounts through it to have it unmount the
/// filesystem if this process dies). `Err` says why not and what to do.
pub fn available() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err(
            "/dev/fuse does not exist (no FUSE in this kernel or container; \
                    containers need --device /dev/fuse)"
                .into(),
        );
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Err(format!("cannot open /dev/fuse: {e}"));
    }
    let Some(fusermount) = find_on_path("fusermount3") else {
        return Err("fusermount3 is not installed: run scripts/setup-fuse.sh \
                    (installs Debian's fuse3)"
            .into());
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let setuid = fs::metadata(&fusermount).map(|m| m.mode() & 0o4000 != 0);
        if !matches!(setuid, Ok(true)) {
            return Err(format!(
                "not root and {} is not setuid root",
                fusermount.display()
            ));
        }
        // auto_unmount needs allow_other, which fusermount3 grants users only so.
        let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
        if !conf.lines().any(|l| l.trim() == "user_allow_other") {
            return Err("not root and /etc/fuse.conf lacks user_allow_other".into());
        }
    }
    Ok(())
}

/// For tests: true when the simulator can be mounted. Otherwise prints why
/// and returns false so the test returns early, except under CI (`CI` set),
/// where scripts/test.sh has made FUSE available and a skip would hide a
/// broken set-up: there it panics.
pub fn usable_or_skip(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: FUSE unavailable under CI: {why}")
        }
        Err(why) => {
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A mounted simulator. Dropping it unmounts (also while a test unwinds from a
/// panic): the mount is detached lazily and its connection aborted, so neither
/// an open file nor a pending request can keep it alive; and fusermount3's
/// auto-unmount removes it if the process dies without dropping it.
pub struct EfsSim {
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    /// The connection's name under /sys/fs/fuse/connections.
    connection: Option<u64>,
}

impl EfsSim {
    /// Mounts `source` (read-only) on `mountpoint` (an existing directory) and
    /// returns once the kernel has finished the FUSE handshake.
    pub fn mount(source: &Path, mountpoint: &Path, options: Options) -> io::Result<EfsSim> {
        let source = source.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        let read_ahead = options.read_ahead;
        let shared = Arc::new(Shared::new(source.clone(), options));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName(format!("efs-sim:{}", source.display())),
            MountOption::Subtype("efs-sim".into()),
            MountOption::NoAtime,
            MountOption::AutoUnmount,
        ];
        // auto_unmount requires allow_other; readers are root in tests anyway.
        config.acl = SessionACL::All;
        let filesystem = EfsFs {
            shared: shared.clone(),
        };
        let session = match fuser::spawn_mount(filesystem, &mountpoint, &config) {
            Ok(session) => session,
            Err(e) => {
                shared.scheduler.shutdown();
                shared.scheduler.join();
                return Err(e);
            }
        };
        let mut sim = EfsSim {
            shared,
            session: Some(session),
            mountpoint,
            connection: None,
        };
        let dev = fs::metadata(&sim.mountpoint)?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        // The kernel names connections by its own dev_t encoding.
        sim.connection = Some((u64::from(major) << 20) | u64::from(minor));
        // FUSE's INIT can only lower read-ahead below the kernel's 128 KiB;
        // raising it to EFS's is a sysfs knob, as efs-utils does for NFS.
        let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        if let Err(e) = fs::write(&knob, format!("{}\n", read_ahead.div_ceil(1024))) {
            eprintln!("efs_sim: could not set {knob}: {e} (read-ahead stays at 128 KiB)");
        }
        Ok(sim)
    }

    /// Where the source is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `relative` (e.g. "m/1/model.ort") under the mountpoint.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// Sets the fault of `relative` (a path relative to the source), replacing
    /// any earlier one of that file. Takes effect for requests answered from
    /// now on.
    pub fn set_fault(&self, relative: impl AsRef<Path>, fault: Fault) {
        lock(&self.shared.faults).insert(
            normal(relative.as_ref()),
            Armed {
                fault,
                fired: false,
            },
        );
    }

    /// Removes every fault. What a fired TruncateAt or RewriteAt did to the
    /// source stays done, and a request already waiting out a hang still
    /// waits its full time.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// What the mount served for `relative` since mounting (or the last reset).
    pub fn stats(&self, relative: impl AsRef<Path>) -> FileStats {
        lock(&self.shared.stats)
            .get(&normal(relative.as_ref()))
            .copied()
            .unwrap_or_default()
    }

    /// Sets every file's counters back to zero.
    pub fn reset_stats(&self) {
        lock(&self.shared.stats).clear();
    }

    fn unmount(&mut self) {
        // Lazy: never EBUSY, so a file a test left open cannot keep the mount.
        if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        // A detached mount with open files keeps its connection (and our
        // session thread) alive; aborting ends both now. Gone already: fine.
        if let Some(id) = self.connection.take() {
            let _ = fs::write(format!("/sys/fs/fuse/connections/{id}/abort"), "1");
        }
        self.shared.scheduler.shutdown();
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
        self.shared.scheduler.join();
    }
}

// Tests share the handle with server threads and tokio tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<EfsSim>();
};

impl Drop for EfsSim {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A path relative to the source, as faults and stats are keyed.
fn normal(relative: &Path) -> PathBuf {
    relative
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Locks, ignoring poison: every critical section leaves its map consistent,
/// and a panicking test must not make the filesystem fail too.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

struct Armed {
    fault: Fault,
    /// TruncateAt, RewriteAt and VanishAt act once.
    fired: bool,
}

/// State shared by the mount handle, the FUSE session and the workers.
struct Shared {
    source: PathBuf,
    options: Options,
    scheduler: Arc<Scheduler>,
    /// Inode numbers <-> paths relative to the source; never forgotten (a
    /// test mount sees few files). Locked briefly per lookup.
    inodes: Mutex<Inodes>,
    /// Open files by handle; each `File` is shared with the reads in flight.
    handles: Mutex<HashMap<u64, OpenFile>>,
    next_handle: AtomicU64,
    /// Held while a fault acts on the source, so no read of that file is
    /// served half-way through a truncation or rewrite.
    faults: Mutex<HashMap<PathBuf, Armed>>,
    stats: Mutex<HashMap<PathBuf, FileStats>>,
    /// When the shared link is free again (the bandwidth ceiling).
    link_free_at: Mutex<Instant>,
}

struct Inodes {
    paths: Vec<PathBuf>,
    by_path: HashMap<PathBuf, u64>,
}

#[derive(Clone)]
struct OpenFile {
    file: Arc<File>,
    relative: PathBuf,
}

impl Shared {
    fn new(source: PathBuf, options: Options) -> Shared {
        let root = PathBuf::new();
        Shared {
            source,
            options,
            scheduler: Scheduler::start(WORKERS),
            inodes: Mutex::new(Inodes {
                paths: vec![root.clone()],
                by_path: HashMap::from([(root, INodeNo::ROOT.0)]),
            }),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            faults: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            link_free_at: Mutex::new(Instant::now()),
        }
    }

    fn inode(&self, relative: &Path) -> INodeNo {
        let mut inodes = lock(&self.inodes);
        if let Some(&ino) = inodes.by_path.get(relative) {
            return INodeNo(ino);
        }
        inodes.paths.push(relative.to_path_buf());
        let ino = inodes.paths.len() as u64;
        inodes.by_path.insert(relative.to_path_buf(), ino);
        INodeNo(ino)
    }

    fn relative(&self, ino: INodeNo) -> Option<PathBuf> {
        let index = usize::try_from(ino.0.checked_sub(1)?).ok()?;
        lock(&self.inodes).paths.get(index).cloned()
    }

    fn count(&self, relative: &Path, update: impl FnOnce(&mut FileStats)) {
        update(lock(&self.stats).entry(relative.to_path_buf()).or_default());
    }

    fn fault(&self, relative: &Path) -> Option<Fault> {
        lock(&self.faults).get(relative).map(|armed| armed.fault)
    }

    fn vanished(&self, relative: &Path) -> bool {
        lock(&self.faults)
            .get(relative)
            .is_some_and(|armed| matches!(armed.fault, Fault::VanishAt(_)) && armed.fired)
    }

    fn attr(&self, relative: &Path) -> Result<FileAttr, Errno> {
        let metadata = fs::symlink_metadata(self.source.join(relative)).map_err(|e| errno(&e))?;
        Ok(file_attr(self.inode(relative), &metadata))
    }

    /// After `delay` on top of the latency, `job` runs on a worker.
    fn round_trip(&self, extra: Duration, job: impl FnOnce() + Send + 'static) {
        self.scheduler
            .at(Instant::now() + self.options.latency + extra, Box::new(job));
    }

    /// Applies the file's fault to a read of `[offset, end)`.
    fn fault_for_read(&self, relative: &Path, offset: u64, end: u64) -> Result<(), Errno> {
        let mut faults = lock(&self.faults);
        let Some(armed) = faults.get_mut(relative) else {
            return Ok(());
        };
        match armed.fault {
            Fault::EioAt(at) if (offset..end).contains(&at) => Err(Errno::EIO),
            Fault::VanishAt(_) if armed.fired => Err(Errno::ESTALE),
            Fault::VanishAt(at) if end > at => {
                armed.fired = true;
                Err(Errno::ESTALE)
            }
            Fault::TruncateAt(at) if end > at && !armed.fired => {
                armed.fired = true;
                let file = OpenOptions::new()
                    .write(true)
                    .open(self.source.join(relative));
                file.and_then(|f| {
                    if f.metadata()?.len() > at {
                        f.set_len(at)?;
                    }
                    Ok(())
                })
                .map_err(|e| errno(&e))
            }
            Fault::RewriteAt(at) if end > at && !armed.fired => {
                armed.fired = true;
                invert_from(&self.source.join(relative), at).map_err(|e| errno(&e))
            }
            _ => Ok(()),
        }
    }

    /// A read, once its round trip is over: faults, the bytes, then the
    /// transfer over the shared link.
    fn serve_read(self: &Arc<Self>, open: &OpenFile, offset: u64, size: u32, reply: ReplyData) {
        let end = offset.saturating_add(u64::from(size));
        if let Err(e) = self.fault_for_read(&open.relative, offset, end) {
            reply.error(e);
            return;
        }
        let mut data = vec![0; size as usize];
        let mut filled = 0;
        while filled < data.len() {
            match open
                .file
                .read_at(&mut data[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            }
        }
        data.truncate(filled);
        self.count(&open.relative, |s| {
            s.reads += 1;
            s.bytes_read += filled as u64;
        });
        match self.transfer_done_at(filled as u64) {
            Some(at) => self.scheduler.at(at, Box::new(move || reply.data(&data))),
            None => reply.data(&data),
        }
    }

    /// Reserves the link for `bytes` after the transfers already on it and
    /// says when they have arrived; `None` without a ceiling.
    fn transfer_done_at(&self, bytes: u64) -> Option<Instant> {
        let bytes_per_sec = self.options.bytes_per_sec.filter(|&b| b > 0)?;
        let duration = Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
        let mut free_at = lock(&self.link_free_at);
        let done = (*free_at).max(Instant::now()) + duration;
        *free_at = done;
        Some(done)
    }
}

/// Overwrites `path` from `at` to its end with each byte inverted.
fn invert_from(path: &Path, at: u64) -> io::Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut position = at;
    let mut buffer = vec![0; 1 << 20];
    loop {
        file.seek(SeekFrom::Start(position))?;
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        buffer[..n].iter_mut().for_each(|b| *b = !*b);
        file.seek(SeekFrom::Start(position))?;
        file.write_all(&buffer[..n])?;
        position += n as u64;
    }
}

fn file_attr(ino: INodeNo, metadata: &Metadata) -> FileAttr {
    let time = |seconds: i64, nanos: i64| {
        UNIX_EPOCH + Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    };
    FileAttr {
        ino,
        size: metadata.len(),
        blocks: metadata.blocks(),
        atime: time(metadata.atime(), metadata.atime_nsec()),
        mtime: time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::from_std(metadata.file_type()).unwrap_or(FileType::RegularFile),
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: metadata.nlink() as u32,
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: MAX_READ,
        flags: 0,
    }
}

/// The FUSE side: answers the kernel from [`Shared`].
struct EfsFs {
    shared: Arc<Shared>,
}

impl EfsFs {
    fn known(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.shared.relative(ino).ok_or(Errno::ESTALE)
    }
}

impl Filesystem for EfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Reads are answered out of order from workers, and NFS lets lookups
        // in one directory run in parallel: ask for both when offered.
        let wanted = InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        // Requests of EFS's rsize; the kernel derives max_pages from this
        // (capped by /proc/sys/fs/fuse/max_pages_limit, 1 MiB by default).
        let _ = config.set_max_write(MAX_READ);
        // The most the kernel takes here; EfsSim::mount raises it after.
        if let Err(max) = config.set_max_readahead(self.shared.options.read_ahead) {
            let _ = config.set_max_readahead(max);
        }
        // Enough read-ahead requests in flight to fill a 15 MiB window with
        // 1 MiB reads several times over (the kernel's default is 12).
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        self.shared.scheduler.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let relative = match self.known(parent) {
            Ok(parent) => parent.join(name),
            Err(e) => return reply.error(e),
        };
        let shared = self.shared.clone();
        self.shared.round_trip(Duration::ZERO, move || {
            shared.count(&relative, |s| s.metadata_ops += 1);
            if shared.vanished(&relative) {
                return reply.error(Errno::ENOENT);
            }
            match shared.attr(&relative) {
                Ok(attr) => reply.entry(&shared.options.attr_ttl, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let relative = match self.known(ino) {
            Ok(relative) => relative,
            Err(e) => return reply.error(e),
        };
        let shared = self.shared.clone();
        self.shared.round_trip(Duration::ZERO, move || {
            shared.count(&relative, |s| s.metadata_ops += 1);
            if shared.vanished(&relative) {
                return reply.error(Errno::ESTALE);
            }
            match shared.attr(&relative) {
                Ok(attr) => reply.attr(&shared.options.attr_ttl, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let relative = match self.known(ino) {
            Ok(relative) => relative,
            Err(e) => return reply.error(e),
        };
        let shared = self.shared.clone();
        self.shared.round_trip(Duration::ZERO, move || {
            match fs::read_link(shared.source.join(&relative)) {
                Ok(target) => reply.data(target.as_os_str().as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let relative = match self.known(ino) {
            Ok(relative) => relative,
            Err(e) => return reply.error(e),
        };
        self.shared.count(&relative, |s| s.opens += 1);
        let hang = match self.shared.fault(&relative) {
            Some(Fault::HangOpen(hang)) => hang,
            _ => Duration::ZERO,
        };
        let shared = self.shared.clone();
        self.shared.round_trip(hang, move || {
            if shared.vanished(&relative) {
                return reply.error(Errno::ESTALE);
            }
            match File::open(shared.source.join(&relative)) {
                Ok(file) => {
                    let fh = shared.next_handle.fetch_add(1, AtomicOrdering::Relaxed);
                    let file = Arc::new(file);
                    lock(&shared.handles).insert(fh, OpenFile { file, relative });
                    // No FOPEN_KEEP_CACHE: each open drops the file's cached
                    // pages, so every open reads through the mount again.
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(open) = lock(&self.shared.handles).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let hang = match self.shared.fault(&open.relative) {
            Some(Fault::HangRead(hang)) => hang,
            _ => Duration::ZERO,
        };
        let shared = self.shared.clone();
        self.shared
            .round_trip(hang, move || shared.serve_read(&open, offset, size, reply));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.shared.handles).remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let relative = match self.known(ino) {
            Ok(relative) => relative,
            Err(e) => return reply.error(e),
        };
        let shared = self.shared.clone();
        self.shared.round_trip(Duration::ZERO, move || {
            let entries = match shared.list(&relative, ino) {
                Ok(entries) => entries,
                Err(e) => return reply.error(e),
            };
            for (index, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(*child, index as u64 + 1, *kind, name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let shared = self.shared.clone();
        self.shared.round_trip(Duration::ZERO, move || {
            match rustix::fs::statvfs(&shared.source) {
                Ok(s) => reply.statfs(
                    s.f_blocks,
                    s.f_bfree,
                    s.f_bavail,
                    s.f_files,
                    s.f_ffree,
                    s.f_bsize as u32,
                    s.f_namemax as u32,
                    s.f_frsize as u32,
                ),
                Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
            }
        });
    }
}

type DirEntry = (INodeNo, FileType, std::ffi::OsString);

impl Shared {
    /// `.`, `..` and the directory's entries (vanished files left out), in a
    /// stable order so readdir offsets stay meaningful between calls.
    fn list(&self, relative: &Path, ino: INodeNo) -> Result<Vec<DirEntry>, Errno> {
        let parent = relative
            .parent()
            .map_or(INodeNo::ROOT, |parent| self.inode(parent));
        let mut children = Vec::new();
        for entry in fs::read_dir(self.source.join(relative)).map_err(|e| errno(&e))? {
            let entry = entry.map_err(|e| errno(&e))?;
            let child = relative.join(entry.file_name());
            if self.vanished(&child) {
                continue;
            }
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            children.push((self.inode(&child), kind, entry.file_name()));
        }
        children.sort_by(|a, b| a.2.cmp(&b.2));
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        entries.extend(children);
        Ok(entries)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs jobs at given instants on a few worker threads. Waiting costs no
/// thread: a job due in 5 s (a hang) only sits in the heap.
struct Scheduler {
    queue: Mutex<Queue>,
    wake: Condvar,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

struct Queue {
    timed: BinaryHeap<Timed>,
    next_seq: u64,
    stopped: bool,
}

struct Timed {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Timed) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Timed {}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Timed) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timed {
    /// Reversed, so the max-heap pops the earliest job (ties: first queued).
    fn cmp(&self, other: &Timed) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Scheduler {
    fn start(workers: usize) -> Arc<Scheduler> {
        let scheduler = Arc::new(Scheduler {
            queue: Mutex::new(Queue {
                timed: BinaryHeap::new(),
                next_seq: 0,
                stopped: false,
            }),
            wake: Condvar::new(),
            workers: Mutex::new(Vec::new()),
        });
        let handles = (0..workers)
            .filter_map(|i| {
                let scheduler = scheduler.clone();
                std::thread::Builder::new()
                    .name(format!("efs-sim-{i}"))
                    .spawn(move || scheduler.work())
                    .ok()
            })
            .collect();
        *lock(&scheduler.workers) = handles;
        scheduler
    }

    fn at(&self, at: Instant, job: Job) {
        let mut queue = lock(&self.queue);
        if queue.stopped {
            return; // dropping the job answers its request with EIO
        }
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.timed.push(Timed { at, seq, job });
        drop(queue);
        // One waiter suffices: it recomputes its deadline from the new head.
        self.wake.notify_one();
    }

    fn work(&self) {
        let mut queue = lock(&self.queue);
        loop {
            if queue.stopped {
                return;
            }
            let now = Instant::now();
            match queue.timed.peek().map(|head| head.at) {
                Some(at) if at <= now => {
                    let Some(due) = queue.timed.pop() else {
                        continue;
                    };
                    if queue.timed.peek().is_some_and(|head| head.at <= now) {
                        self.wake.notify_one();
                    }
                    drop(queue);
                    (due.job)();
                    queue = lock(&self.queue);
                }
                Some(at) => {
                    queue = self
                        .wake
                        .wait_timeout(queue, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                None => queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Stops the workers; jobs not yet run are dropped (their requests get
    /// EIO, on a connection that is going away anyway).
    fn shutdown(&self) {
        let pending = {
            let mut queue = lock(&self.queue);
            queue.stopped = true;
            std::mem::take(&mut queue.timed)
        };
        self.wake.notify_all();
        drop(pending);
    }

    fn join(&self) {
        let workers = std::mem::take(&mut *lock(&self.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}
