//! Reading a model file out of the repository into verified memory: the cold
//! load's critical path.
//!
//! The file is read once, with several reads in flight on a network
//! filesystem (EFS answers each read after a round trip, so one sequential
//! reader waits on every one of them; on a local one, a single reader thread
//! runs ahead of the hash), straight into anonymous memory of exactly the
//! manifest's size, while the calling thread hashes the chunks in order as they
//! arrive. Nothing is written to local disk on this path, so a load does not
//! wait on the kernel's dirty-page throttling; the staging tier writes its
//! local copy afterwards, off the request's path (see [`super::Staging`]).
//!
//! What a reader of the repository can rely on:
//! - Only a regular file is read: a FIFO, a device or a directory is refused
//!   before a byte is read (it is opened non-blocking, so even opening a FIFO
//!   cannot hang), and a symlink swapped in since the path was checked is
//!   refused by `O_NOFOLLOW`.
//! - No more than the manifest's size is read, plus one byte to prove the file
//!   is not longer: a file that grows without end (`/dev/zero`, a writer that
//!   never stops) cannot fill memory or disk.
//! - A file that shrinks, errs or changes while it is read gives an error, never
//!   a crash: it is read with `pread`, never mapped, so a truncation by another
//!   NFS client cannot raise SIGBUS here.
//! - The bytes come back read-only and verified against the manifest's sha256;
//!   ONNX Runtime never sees a byte that was not hashed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use memmap2::{Advice, Mmap, MmapOptions};
use sha2::{Digest, Sha256};

use super::{RepositoryError, ResolvedModel};

/// How model files are read from the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Reads in flight at once (at least 1) on a network filesystem (see
    /// [`is_network_filesystem`]): EFS and NFS reward parallel reads, and
    /// throughput grows with them until the link's ceiling. On a local
    /// filesystem one reader thread runs ahead of the hash: the page cache
    /// answers at once, and on 2 cores more readers only took CPU from the
    /// hash (128 MiB: 2 readers 127 ms, 8 readers 137 ms, against 108 ms
    /// for one reading and hashing in turn, before the reader had a thread).
    pub readers: usize,
    /// Bytes per read.
    pub chunk_bytes: usize,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            readers: 8,
            chunk_bytes: 1 << 20,
        }
    }
}

/// A model file's bytes in memory, verified against its manifest and read-only.
#[derive(Debug)]
pub struct VerifiedBytes {
    /// Anonymous memory (or a mapping of this process's own staged copy).
    pub bytes: Mmap,
    pub sha256: String,
}

/// Opens `path` for reading if it is a regular file, without following a
/// symlink and without blocking (`O_NONBLOCK` makes opening a FIFO return at
/// once; it changes nothing for a regular file). Returns the file and its size.
pub(crate) fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory is never read)",
        ));
    }
    Ok((file, metadata.len()))
}

/// Reads a small repository file (a manifest, `aliases.json`) whole, if it is
/// a regular file of at most `limit` bytes.
pub(crate) fn read_small(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let (file, size) = open_regular(path)?;
    if size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{size} bytes, more than the {limit} a repository metadata file may have"),
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    let read = read_fully_at(&file, &mut bytes, 0)?;
    bytes.truncate(read);
    Ok(bytes)
}

/// Reads `model`'s file into anonymous memory, hashing in order while up to
/// `options.readers` reads are in flight, and checks it against the manifest.
/// Blocking: call it from a blocking thread.
pub fn fetch(
    model: &ResolvedModel,
    options: FetchOptions,
) -> Result<VerifiedBytes, RepositoryError> {
    let (file, len) = open_model(model)?;
    let mut memory = MmapOptions::new()
        .len(len)
        .map_anon()
        .map_err(|e| unavailable(model, format!("cannot allocate {len} bytes for it: {e}")))?;
    // Huge pages where the kernel allows them (`madvise` mode): a 128 MiB model
    // faults in 64 times instead of 32,768. Only advice: without it, 4 KiB pages.
    // Touching 128 MiB of fresh memory here: 16-19 ms in huge pages, 106-120 ms
    // in 4 KiB pages. In a VM whose balloon reports free pages to the host
    // (virtio-balloon free page reporting, as on this project's build machines),
    // free 2 MiB blocks idle for a few seconds are handed back to the host, and
    // the first touch of one then waits on the host: 165-200 ms for the same
    // 128 MiB, the tail the load-path benchmark shows (README, "Benchmarks").
    // Still no worse than 4 KiB pages, and 6x faster when the host kept them.
    let _ = memory.advise(Advice::HugePage);
    let options = FetchOptions {
        readers: if is_network_filesystem(&file) {
            options.readers
        } else {
            1
        },
        ..options
    };
    let sha256 = read_hashing(&file, &mut memory, options).map_err(|e| read_error(model, e))?;
    check_end_and_sha256(model, &file, sha256.clone())?;
    let bytes = memory
        .make_read_only()
        .map_err(|e| unavailable(model, e.to_string()))?;
    Ok(VerifiedBytes { bytes, sha256 })
}

/// Hashes `model`'s file against its manifest without keeping it (for
/// `verify`): the same checks as [`fetch`], streamed through one buffer.
pub fn verify_file(model: &ResolvedModel) -> Result<(), RepositoryError> {
    let (file, len) = open_model(model)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; len.min(1 << 20)];
    let mut offset = 0usize;
    while offset < len {
        let chunk = &mut buffer[..(len - offset).min(1 << 20)];
        read_chunk(&file, chunk, offset as u64).map_err(|e| read_error(model, e))?;
        hasher.update(&*chunk);
        offset += chunk.len();
    }
    check_end_and_sha256(model, &file, hex::encode(hasher.finalize()))
}

/// Opens `model`'s file if it is a regular file of exactly the manifest's
/// (non-zero) size; returns it with that size.
fn open_model(model: &ResolvedModel) -> Result<(File, usize), RepositoryError> {
    let key = model.key.to_string();
    let expected = model.manifest.size;
    let (file, size) = open_regular(&model.file).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidInput => RepositoryError::InvalidManifest {
            key: key.clone(),
            reason: format!("{}: {e}", model.manifest.file),
        },
        _ => unavailable(model, e.to_string()),
    })?;
    if size != expected {
        return Err(RepositoryError::InvalidManifest {
            key,
            reason: format!("the file is {size} bytes, the manifest says {expected}"),
        });
    }
    let len = usize::try_from(expected)
        .ok()
        .filter(|&len| len > 0)
        .ok_or_else(|| RepositoryError::InvalidManifest {
            key,
            reason: format!("a model file of {expected} bytes cannot be loaded"),
        })?;
    Ok((file, len))
}

/// Checks that the file ends at the manifest's size (one byte past it must be
/// the end) and that `sha256` is the manifest's.
fn check_end_and_sha256(
    model: &ResolvedModel,
    file: &File,
    sha256: String,
) -> Result<(), RepositoryError> {
    let key = model.key.to_string();
    let expected = model.manifest.size;
    let past_end =
        read_fully_at(file, &mut [0u8; 1], expected).map_err(|e| read_error(model, e))?;
    if past_end != 0 {
        return Err(RepositoryError::InvalidManifest {
            key,
            reason: format!(
                "the file is longer than the {expected} bytes its manifest says; it was not loaded"
            ),
        });
    }
    if sha256 != model.manifest.sha256 {
        tracing::error!(model = %key, expected = %model.manifest.sha256, actual = %sha256, "checksum mismatch");
        return Err(RepositoryError::ChecksumMismatch {
            key,
            expected: model.manifest.sha256.clone(),
            actual: sha256,
        });
    }
    Ok(())
}

fn unavailable(model: &ResolvedModel, reason: String) -> RepositoryError {
    RepositoryError::Unavailable {
        path: model.file.display().to_string(),
        reason,
    }
}

/// A failed read of the model file: retryable (503), whether it erred or came
/// back short because the file changed underneath.
fn read_error(model: &ResolvedModel, e: io::Error) -> RepositoryError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            unavailable(model, format!("the file changed while it was read ({e})"))
        }
        _ => unavailable(model, e.to_string()),
    }
}

/// Whether `file` is on a filesystem that answers each read after a network
/// round trip (NFS, which EFS is, SMB, Ceph, 9p, Lustre, and FUSE, which the
/// test suite's EFS-like filesystem is), by its `statfs` magic number.
pub fn is_network_filesystem(file: &File) -> bool {
    const NETWORK: [u64; 8] = [
        0x6969,      // NFS (and EFS)
        0x6573_5546, // FUSE
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x00C3_6400, // Ceph
        0x0102_1997, // 9p
        0x0BD0_0BD0, // Lustre
        0x0110_2013, // GFS2
    ];
    rustix::fs::fstatfs(file).is_ok_and(|stat| NETWORK.contains(&(stat.f_type as u64)))
}

/// Fills `memory` from `file` (offset 0) and returns the sha256 of it, hex.
///
/// Chunks are read by `options.readers` scoped threads, each into its own
/// disjoint `&mut` slice of `memory`, which it hands to this thread once read;
/// this thread hashes them in offset order. A short read (the file shrank) is
/// `UnexpectedEof`. On any error the other readers stop after their current read.
///
/// One reader is still a thread of its own: the page faults and the copy out
/// of the page cache then run on one core while the hash runs on the other
/// (128 MiB from the page cache on 2 cores: 95-102 ms against 135-142 ms
/// reading and hashing in turn on one thread; `scripts/bench-load-path.sh`).
fn read_hashing(file: &File, memory: &mut [u8], options: FetchOptions) -> io::Result<String> {
    let chunk_bytes = options.chunk_bytes.max(4096);
    let chunks = memory.len().div_ceil(chunk_bytes);
    let readers = options.readers.clamp(1, chunks.max(1));
    let mut hasher = Sha256::new();
    if chunks <= 1 {
        // One chunk: nothing to overlap, no thread to start.
        for (index, chunk) in memory.chunks_mut(chunk_bytes).enumerate() {
            read_chunk(file, chunk, (index * chunk_bytes) as u64)?;
            hasher.update(&*chunk);
        }
        return Ok(hex::encode(hasher.finalize()));
    }
    let work = Mutex::new(memory.chunks_mut(chunk_bytes).enumerate());
    let stop = AtomicBool::new(false);
    let (done, arrivals) = mpsc::channel::<(usize, io::Result<&mut [u8]>)>();
    std::thread::scope(|scope| {
        for _ in 0..readers {
            let done = done.clone();
            let (work, stop) = (&work, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = work.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((index, chunk)) = next else { break };
                    let result =
                        read_chunk(file, chunk, (index * chunk_bytes) as u64).map(|()| chunk);
                    if done.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done);
        let mut waiting: BTreeMap<usize, &mut [u8]> = BTreeMap::new();
        let mut next = 0;
        for (index, result) in arrivals.iter() {
            match result {
                Ok(chunk) => {
                    waiting.insert(index, chunk);
                    while let Some(chunk) = waiting.remove(&next) {
                        hasher.update(&*chunk);
                        next += 1;
                    }
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        if next == chunks {
            Ok(hex::encode(hasher.finalize()))
        } else {
            Err(io::Error::other("a reader thread stopped early"))
        }
    })
}

/// Fills `chunk` from `offset`, or fails with `UnexpectedEof` if the file ends first.
fn read_chunk(file: &File, chunk: &mut [u8], offset: u64) -> io::Result<()> {
    let read = read_fully_at(file, chunk, offset)?;
    if read < chunk.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "it ended at byte {} where {} were expected",
                offset + read as u64,
                offset + chunk.len() as u64
            ),
        ));
    }
    Ok(())
}

/// `pread` until `buffer` is full or the file ends; returns the bytes read.
fn read_fully_at(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{Manifest, ModelKey};
    use std::fs;

    fn model_at(path: &Path, bytes: &[u8]) -> ResolvedModel {
        let sha = hex::encode(Sha256::digest(bytes));
        let manifest = Manifest::parse(
            format!(
                r#"{{"file":"model.onnx","sha256":"{sha}","size":{}}}"#,
                bytes.len()
            )
            .as_bytes(),
        )
        .unwrap();
        ResolvedModel {
            key: ModelKey::new("m", "1").unwrap(),
            manifest,
            file: path.to_path_buf(),
        }
    }

    fn small_chunks(readers: usize) -> FetchOptions {
        FetchOptions {
            readers,
            chunk_bytes: 4096,
        }
    }

    #[test]
    fn reads_and_verifies_with_one_or_many_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        // Not a multiple of the chunk size, so the last chunk is short.
        let bytes: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        let fetched = fetch(&model_at(&path, &bytes), small_chunks(4)).unwrap();
        assert_eq!(&fetched.bytes[..], &bytes[..]);
        // The reader threads themselves (a local file gets one: see
        // `is_network_filesystem`; EFS gets `readers`).
        let expected = hex::encode(Sha256::digest(&bytes));
        for readers in [1, 3, 16] {
            let mut memory = vec![0u8; bytes.len()];
            let file = File::open(&path).unwrap();
            let sha256 = read_hashing(&file, &mut memory, small_chunks(readers)).unwrap();
            assert_eq!((&memory, &sha256), (&bytes, &expected), "{readers} readers");
        }
        assert!(!is_network_filesystem(&File::open(&path).unwrap()));
    }

    #[test]
    fn a_short_read_with_many_readers_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        fs::write(&path, vec![7u8; 10_000]).unwrap();
        let mut memory = vec![0u8; 20_000];
        let file = File::open(&path).unwrap();
        let err = read_hashing(&file, &mut memory, small_chunks(4)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn a_changed_byte_is_a_checksum_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        let bytes = vec![1u8; 50_000];
        let model = model_at(&path, &bytes);
        let mut changed = bytes.clone();
        changed[40_000] = 2;
        fs::write(&path, &changed).unwrap();
        let err = fetch(&model, small_chunks(4)).unwrap_err();
        assert!(
            matches!(err, RepositoryError::ChecksumMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_of_another_size_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        let model = model_at(&path, b"abcd");
        fs::write(&path, b"abcde").unwrap();
        let err = fetch(&model, FetchOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("5 bytes, the manifest says 4"),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_or_a_device_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.onnx");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path; no memory is shared.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Opening a FIFO for reading blocks until a writer comes, unless O_NONBLOCK:
        // this returns at once.
        let err = fetch(&model_at(&fifo, b"abcd"), FetchOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = fetch(
            &model_at(Path::new("/dev/zero"), b"abcd"),
            FetchOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(read_small(&fifo, 1 << 20).is_err());
    }

    #[test]
    fn read_small_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases.json");
        fs::write(&path, vec![b' '; 2000]).unwrap();
        assert_eq!(read_small(&path, 2000).unwrap().len(), 2000);
        assert!(read_small(&path, 1999).is_err());
    }
}
