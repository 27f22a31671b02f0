//! The staging tier: verified local copies of model files, bounded in bytes,
//! for reloads in milliseconds after a model leaves the memory cache.
//!
//! A cold load never waits on it. [`Staging::stage`] answers with verified
//! bytes in memory: a mapping of this process's staged copy when there is one
//! (no read of the repository, no hash), else the file fetched from the
//! repository into anonymous memory and hashed on the way ([`super::fetch`]).
//! Fetched bytes are then written to the staging directory by a background
//! thread, so the local disk write, and the kernel's throttling of writers
//! once much page cache is dirty, stay off the request's path. Until that
//! write is done, a reload takes the same bytes from memory.
//!
//! Only this process's own copies are ever mapped from disk: mapping a file on
//! EFS/NFS would kill the process with SIGBUS if another client truncated it
//! (DESIGN section 7). A staged copy is trusted without hashing again because
//! this process hashed the bytes it wrote, into a directory only it writes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};

use lru::LruCache;
use memmap2::Mmap;

use super::fetch::{FetchOptions, fetch};
use super::{ModelKey, RepositoryError, ResolvedModel, open_no_follow};

/// A verified local copy of a model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Where [`Staging::stage`] found a model's verified bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageSource {
    /// Read from the repository and hashed by this load.
    Fetched,
    /// A mapping of this process's staged copy: no read of the repository, no hash.
    Staged,
    /// The bytes an earlier load fetched, still in memory while their staged
    /// copy is being written: no read, no hash.
    Pending,
}

impl StageSource {
    /// Whether the repository was left alone (no read, no hash).
    pub fn reused(self) -> bool {
        self != StageSource::Fetched
    }
}

/// A model's verified bytes, ready for the engine.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Read-only memory holding exactly the manifest's bytes. Shared: the
    /// background writer holds it until the staged copy is written.
    pub bytes: Arc<Mmap>,
    pub source: StageSource,
}

/// Counters of the staging tier, for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StagingStats {
    /// Files read from the repository and hashed (a failed verification counts too).
    pub hashes: u64,
    /// Loads served from an existing staged copy, or from bytes waiting to be written.
    pub reuses: u64,
    /// Staged copies deleted to stay within the budget.
    pub evictions: u64,
    /// Staged copies written (in the background).
    pub writes: u64,
    /// Staged copies that could not be written (disk full, I/O error); the
    /// model still loaded, from memory.
    pub write_failures: u64,
    /// Verified models waiting for their staged copy to be written.
    pub pending_writes: u64,
    pub bytes_used: u64,
    pub bytes_budget: u64,
    pub files: u64,
}

/// The staging directory, its byte-bounded LRU of files, and the writer that
/// fills it in the background. Dropping it stops the writer after its current
/// file.
#[derive(Debug)]
pub struct Staging {
    shared: Arc<Shared>,
    /// Verified bytes to write; the writer thread ends when this is dropped.
    writes: Mutex<Option<mpsc::Sender<WriteJob>>>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    budget: u64,
    /// Which keys have a staged file, least recently used first out, the bytes
    /// they hold, and the writes not done yet. A std Mutex: held only for
    /// bookkeeping and for opening or deleting a local file, never across a
    /// read of the repository or a write.
    state: Mutex<State>,
    /// Signalled whenever a pending write finishes (see [`Staging::wait_for_writes`]).
    written: Condvar,
    hashes: AtomicU64,
    reuses: AtomicU64,
    evictions: AtomicU64,
    writes: AtomicU64,
    write_failures: AtomicU64,
}

#[derive(Debug)]
struct State {
    files: LruCache<ModelKey, StagedFile>,
    used: u64,
    /// Fetched, verified bytes whose staged copy is not written yet, with their sha256.
    pending: HashMap<ModelKey, (String, Arc<Mmap>)>,
}

#[derive(Debug)]
struct WriteJob {
    key: ModelKey,
    sha256: String,
    extension: String,
    bytes: Arc<Mmap>,
}

impl Staging {
    /// Creates (or empties) the staging directory and starts its writer. Files
    /// left by an earlier process are removed: this process did not hash them,
    /// so it does not trust them. A `budget` of 0 stages nothing: every load
    /// reads the repository.
    pub fn open(dir: &Path, budget: u64) -> Result<Staging, RepositoryError> {
        let unavailable = |e: std::io::Error| RepositoryError::Unavailable {
            path: dir.display().to_string(),
            reason: format!("staging directory: {e}"),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unavailable)?;
        for entry in fs::read_dir(dir).map_err(unavailable)? {
            let path = entry.map_err(unavailable)?.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            budget,
            state: Mutex::new(State {
                files: LruCache::unbounded(),
                used: 0,
                pending: HashMap::new(),
            }),
            written: Condvar::new(),
            hashes: AtomicU64::new(0),
            reuses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
        });
        let (sender, jobs) = mpsc::channel::<WriteJob>();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("staging-writer".into())
            .spawn(move || {
                for job in jobs {
                    writer.write(job);
                }
            })
            .map_err(unavailable)?;
        Ok(Staging {
            shared,
            writes: Mutex::new(Some(sender)),
        })
    }

    /// The verified bytes of `model`'s file: this process's staged copy, or the
    /// bytes still waiting to be written, if either matches the manifest's
    /// sha256 (no read of the repository, no hash); else the file fetched from
    /// the repository and verified ([`fetch`]), whose staged copy is then
    /// written in the background. On a mismatch nothing is kept. Blocking: call
    /// it from a blocking thread.
    pub fn stage(
        &self,
        model: &ResolvedModel,
        options: FetchOptions,
    ) -> Result<Staged, RepositoryError> {
        let shared = &self.shared;
        if let Some(staged) = shared.reuse(model) {
            shared.reuses.fetch_add(1, Ordering::Relaxed);
            return Ok(staged);
        }
        let fetched = fetch(model, options);
        shared.hashes.fetch_add(1, Ordering::Relaxed);
        let fetched = fetched?;
        let bytes = Arc::new(fetched.bytes);
        if model.manifest.size <= shared.budget {
            let job = WriteJob {
                key: model.key.clone(),
                sha256: fetched.sha256.clone(),
                extension: model
                    .file
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("onnx")
                    .to_string(),
                bytes: bytes.clone(),
            };
            let sender = self.writes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(sender) = sender.as_ref() {
                shared
                    .lock()
                    .pending
                    .insert(job.key.clone(), (job.sha256.clone(), bytes.clone()));
                if let Err(mpsc::SendError(job)) = sender.send(job) {
                    shared.lock().pending.remove(&job.key);
                }
            }
        }
        Ok(Staged {
            bytes,
            source: StageSource::Fetched,
        })
    }

    /// Forgets and deletes the staged copy of `key`, if any.
    pub fn remove(&self, key: &ModelKey) {
        let mut state = self.shared.lock();
        state.pending.remove(key);
        if let Some(old) = state.files.pop(key) {
            state.used -= old.size;
            let _ = fs::remove_file(&old.path);
        }
    }

    /// Waits until no staged copy is waiting to be written (for tests,
    /// benchmarks and a clean shutdown), at most `timeout`. Returns whether
    /// none is.
    pub fn wait_for_writes(&self, timeout: std::time::Duration) -> bool {
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .written
            .wait_timeout_while(state, timeout, |state| !state.pending.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        state.pending.is_empty()
    }

    pub fn stats(&self) -> StagingStats {
        let shared = &self.shared;
        let state = shared.lock();
        StagingStats {
            hashes: shared.hashes.load(Ordering::Relaxed),
            reuses: shared.reuses.load(Ordering::Relaxed),
            evictions: shared.evictions.load(Ordering::Relaxed),
            writes: shared.writes.load(Ordering::Relaxed),
            write_failures: shared.write_failures.load(Ordering::Relaxed),
            pending_writes: state.pending.len() as u64,
            bytes_used: state.used,
            bytes_budget: shared.budget,
            files: state.files.len() as u64,
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Ends the writer once it has finished its current file.
        self.writes.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Shared {
    /// The staged copy (mapped while the lock is held, so that a concurrent
    /// eviction cannot delete it between the check and the open) or the pending
    /// bytes of `model`, if their sha256 is the manifest's.
    fn reuse(&self, model: &ResolvedModel) -> Option<Staged> {
        let key = &model.key;
        let mut state = self.lock();
        if let Some((sha256, bytes)) = state.pending.get(key)
            && *sha256 == model.manifest.sha256
        {
            return Some(Staged {
                bytes: bytes.clone(),
                source: StageSource::Pending,
            });
        }
        let staged = state.files.get(key)?.clone();
        if staged.sha256 == model.manifest.sha256
            && let Ok(bytes) = map_staged(&staged)
        {
            return Some(Staged {
                bytes: Arc::new(bytes),
                source: StageSource::Staged,
            });
        }
        // Outdated or gone: forget it, and fetch afresh.
        state.files.pop(key);
        state.used -= staged.size;
        let _ = fs::remove_file(&staged.path);
        None
    }

    /// Writes one staged copy (the writer thread's job): makes room, writes to
    /// a temporary name, renames into place, and records it.
    fn write(&self, job: WriteJob) {
        let size = job.bytes.len() as u64;
        let reserved = self.reserve(&job.key, size);
        let reserved_ok = reserved.is_ok();
        let written = reserved.and_then(|()| {
            let path = self.dir.join(format!(
                "{}@{}.{}.{}",
                job.key.name(),
                job.key.version(),
                &job.sha256[..16],
                job.extension
            ));
            let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
            temp.as_file_mut().write_all(&job.bytes)?;
            temp.persist(&path).map_err(|e| e.error)?;
            // Read-only from here on: the engine maps it, nothing may write it.
            let mut permissions = fs::metadata(&path)?.permissions();
            permissions.set_readonly(true);
            fs::set_permissions(&path, permissions)?;
            Ok(path)
        });
        let mut state = self.lock();
        let still_wanted = state
            .pending
            .get(&job.key)
            .is_some_and(|(sha, _)| *sha == job.sha256);
        state.pending.remove(&job.key);
        match written {
            Ok(path) if still_wanted => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                let staged = StagedFile {
                    path,
                    sha256: job.sha256,
                    size,
                };
                if let Some(old) = state.files.put(job.key, staged) {
                    state.used -= old.size;
                    let _ = fs::remove_file(&old.path);
                }
            }
            Ok(path) => {
                // Removed while it was written.
                state.used -= size;
                let _ = fs::remove_file(path);
            }
            Err(e) => {
                self.write_failures.fetch_add(1, Ordering::Relaxed);
                if reserved_ok {
                    state.used -= size;
                }
                tracing::warn!(model = %job.key, error = %e, "could not write the staged copy; the model stays loaded from memory");
            }
        }
        drop(state);
        self.written.notify_all();
    }

    /// Evicts least recently used files until `size` more bytes fit, then
    /// counts them as used. Deleting a file that a session still maps is safe
    /// on a local filesystem: the pages stay until the mapping goes.
    fn reserve(&self, key: &ModelKey, size: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        if let Some(old) = state.files.pop(key) {
            state.used -= old.size;
            let _ = fs::remove_file(&old.path);
        }
        while state.used + size > self.budget {
            let Some((_, victim)) = state.files.pop_lru() else {
                return Err(std::io::Error::other(format!(
                    "{size} bytes do not fit in the staging budget of {}",
                    self.budget
                )));
            };
            state.used -= victim.size;
            let _ = fs::remove_file(&victim.path);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        state.used += size;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Bookkeeping only; a panic while holding it cannot leave it half-written
        // in a way that matters more than losing the process, so recover.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Maps this process's staged copy read-only.
fn map_staged(staged: &StagedFile) -> std::io::Result<Mmap> {
    let file: File = open_no_follow(&staged.path)?;
    if file.metadata()?.len() != staged.size {
        return Err(std::io::Error::other("the staged copy changed size"));
    }
    // SAFETY: a mapping is only sound while no one changes the file under it
    // (a truncation turns reads into SIGBUS). This is a read-only file this
    // process wrote into its private (0700) staging directory; nothing writes
    // or truncates it after it was renamed into place, and deleting it (on
    // eviction) leaves the pages of an existing mapping intact.
    unsafe { Mmap::map(&file) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::{PublishRequest, Repository};

    fn setup(files: &[(&str, &[u8])]) -> (tempfile::TempDir, Repository) {
        let root = tempfile::tempdir().unwrap();
        let repo = Repository::open(root.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let path = src.path().join(format!("{name}.onnx"));
            fs::write(&path, bytes).unwrap();
            repo.publish(&PublishRequest {
                name: name.to_string(),
                version: "1".into(),
                source: path,
                team: None,
                description: None,
            })
            .unwrap();
        }
        (root, repo)
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    #[test]
    fn fetches_once_then_reuses_the_pending_bytes_and_the_staged_copy() {
        let (_root, repo) = setup(&[("a", b"aaaa")]);
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path(), 100).unwrap();
        let model = repo.read(&ModelKey::new("a", "1").unwrap()).unwrap();
        let first = staging.stage(&model, FetchOptions::default()).unwrap();
        assert_eq!(first.source, StageSource::Fetched);
        assert_eq!(&first.bytes[..], b"aaaa");
        assert!(staging.wait_for_writes(WAIT));
        let second = staging.stage(&model, FetchOptions::default()).unwrap();
        assert_eq!(second.source, StageSource::Staged);
        assert_eq!(&second.bytes[..], b"aaaa");
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "one staged copy");
        let stats = staging.stats();
        assert_eq!(
            (
                stats.hashes,
                stats.reuses,
                stats.writes,
                stats.bytes_used,
                stats.pending_writes
            ),
            (1, 1, 1, 4, 0)
        );
    }

    #[test]
    fn a_mismatch_stages_nothing() {
        let (root, repo) = setup(&[("a", b"aaaa")]);
        fs::write(root.path().join("a/1/model.onnx"), b"aaab").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path(), 100).unwrap();
        let model = repo.read(&ModelKey::new("a", "1").unwrap()).unwrap();
        let err = staging.stage(&model, FetchOptions::default()).unwrap_err();
        assert!(
            matches!(err, RepositoryError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert!(staging.wait_for_writes(WAIT));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(staging.stats().bytes_used, 0);
    }

    #[test]
    fn evicts_least_recently_used_files_to_stay_in_budget() {
        let (_root, repo) = setup(&[("a", b"aaaa"), ("b", b"bbbb"), ("c", b"cccc")]);
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path(), 8).unwrap();
        let get = |n: &str| repo.read(&ModelKey::new(n, "1").unwrap()).unwrap();
        for name in ["a", "b", "c"] {
            staging.stage(&get(name), FetchOptions::default()).unwrap();
            assert!(staging.wait_for_writes(WAIT));
        }
        let stats = staging.stats();
        assert_eq!((stats.bytes_used, stats.files, stats.evictions), (8, 2, 1));
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("a@")),
            "a was least recently used: {names:?}"
        );
        // A model larger than the whole staging budget still loads, from memory.
        let tiny = Staging::open(tempfile::tempdir().unwrap().path(), 3).unwrap();
        let staged = tiny.stage(&get("a"), FetchOptions::default()).unwrap();
        assert_eq!(&staged.bytes[..], b"aaaa");
        assert!(tiny.wait_for_writes(WAIT));
        assert_eq!(tiny.stats().files, 0);
    }

    #[test]
    fn an_evicted_copy_is_never_handed_out_half_deleted() {
        // Many loads of two models through a staging budget that holds one:
        // each reuse maps its copy while the bookkeeping lock is held, so a
        // concurrent eviction can never delete it between check and open.
        let (_root, repo) = setup(&[("a", b"aaaa"), ("b", b"bbbb")]);
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path(), 4).unwrap();
        let models = [
            repo.read(&ModelKey::new("a", "1").unwrap()).unwrap(),
            repo.read(&ModelKey::new("b", "1").unwrap()).unwrap(),
        ];
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (staging, models) = (&staging, &models);
                scope.spawn(move || {
                    for i in 0..200 {
                        let model = &models[(i + t) % 2];
                        let staged = staging.stage(model, FetchOptions::default()).unwrap();
                        assert_eq!(staged.bytes.len(), 4);
                    }
                });
            }
        });
        assert!(staging.wait_for_writes(WAIT));
        assert!(staging.stats().bytes_used <= 4);
    }

    #[test]
    fn open_clears_files_left_by_an_earlier_process() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old@1.0000.onnx"), b"x").unwrap();
        Staging::open(dir.path(), 10).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
