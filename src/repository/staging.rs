//! The staging tier: verified local copies of model files, bounded in bytes.
//!
//! ONNX Runtime only ever sees a staged copy. Mapping a file on EFS/NFS would
//! kill the process with SIGBUS if another client truncated or removed it while
//! mapped (DESIGN section 7), and hashing in one pass while copying means a
//! model is read from the network once. A staged copy is reused after its model
//! leaves the memory cache, without hashing again: it was hashed as it was
//! written, by this process, into a directory only this process writes.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;

use super::publish::copy_hashing;
use super::{ModelKey, RepositoryError, ResolvedModel, open_no_follow};

/// A verified local copy of a model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Counters of the staging tier, for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StagingStats {
    /// Files copied and hashed (a failed verification counts too).
    pub hashes: u64,
    /// Loads served from an existing staged copy.
    pub reuses: u64,
    /// Staged copies deleted to stay within the budget.
    pub evictions: u64,
    pub bytes_used: u64,
    pub bytes_budget: u64,
    pub files: u64,
}

/// The staging directory and its byte-bounded LRU of files.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    budget: u64,
    /// Which keys have a staged file, least recently used first out, and the
    /// bytes they hold. A std Mutex: held only for bookkeeping, never across I/O
    /// other than deleting an evicted file.
    state: Mutex<State>,
    hashes: AtomicU64,
    reuses: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Debug)]
struct State {
    files: LruCache<ModelKey, StagedFile>,
    used: u64,
}

impl Staging {
    /// Creates (or empties) the staging directory. Files left by an earlier
    /// process are removed: this process did not hash them, so it does not
    /// trust them.
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
        Ok(Staging {
            dir: dir.to_path_buf(),
            budget,
            state: Mutex::new(State {
                files: LruCache::unbounded(),
                used: 0,
            }),
            hashes: AtomicU64::new(0),
            reuses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// Returns a verified local copy of `model`'s file, and whether it was
    /// reused: the staged one if this process already verified it (`true`),
    /// else a new copy hashed while copying (`false`). On a mismatch the copy is
    /// deleted and nothing is staged. Blocking: call it from a blocking thread.
    pub fn stage(&self, model: &ResolvedModel) -> Result<(StagedFile, bool), RepositoryError> {
        let key = &model.key;
        if let Some(staged) = self.lock().files.get(key).cloned()
            && staged.sha256 == model.manifest.sha256
            && staged.path.is_file()
        {
            self.reuses.fetch_add(1, Ordering::Relaxed);
            return Ok((staged, true));
        }
        let size = model.manifest.size;
        if size > self.budget {
            return Err(RepositoryError::StagingTooSmall {
                key: key.to_string(),
                size,
                budget: self.budget,
            });
        }
        self.reserve(key, size);
        let result = self.copy_and_verify(model);
        let mut state = self.lock();
        state.used -= size;
        let staged = result?;
        state.used += staged.size;
        if let Some(old) = state.files.put(key.clone(), staged.clone()) {
            state.used -= old.size;
            if old.path != staged.path {
                let _ = fs::remove_file(&old.path);
            }
        }
        Ok((staged, false))
    }

    /// Forgets and deletes the staged copy of `key`, if any.
    pub fn remove(&self, key: &ModelKey) {
        let mut state = self.lock();
        if let Some(old) = state.files.pop(key) {
            state.used -= old.size;
            let _ = fs::remove_file(&old.path);
        }
    }

    pub fn stats(&self) -> StagingStats {
        let state = self.lock();
        StagingStats {
            hashes: self.hashes.load(Ordering::Relaxed),
            reuses: self.reuses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes_used: state.used,
            bytes_budget: self.budget,
            files: state.files.len() as u64,
        }
    }

    /// Evicts least recently used files until `size` more bytes fit, then
    /// counts them as used until the copy finishes. Deleting a file that a
    /// session still maps is safe on a local filesystem: the pages stay until
    /// the mapping goes.
    fn reserve(&self, key: &ModelKey, size: u64) {
        let mut state = self.lock();
        if let Some(old) = state.files.pop(key) {
            state.used -= old.size;
            let _ = fs::remove_file(&old.path);
        }
        while state.used + size > self.budget {
            let Some((_, victim)) = state.files.pop_lru() else {
                break;
            };
            state.used -= victim.size;
            let _ = fs::remove_file(&victim.path);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        state.used += size;
    }

    fn copy_and_verify(&self, model: &ResolvedModel) -> Result<StagedFile, RepositoryError> {
        let key = &model.key;
        let io_error = |path: &Path, e: std::io::Error| RepositoryError::Unavailable {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut source = open_no_follow(&model.file).map_err(|e| io_error(&model.file, e))?;
        let mut temp =
            tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let copied = copy_hashing(&mut source, temp.as_file_mut());
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let (sha256, size) = copied.map_err(|e| io_error(&model.file, e))?;
        // `temp` is deleted when dropped on any early return below.
        if sha256 != model.manifest.sha256 {
            tracing::error!(model = %key, expected = %model.manifest.sha256, actual = %sha256, "checksum mismatch");
            return Err(RepositoryError::ChecksumMismatch {
                key: key.to_string(),
                expected: model.manifest.sha256.clone(),
                actual: sha256,
            });
        }
        if size != model.manifest.size {
            return Err(RepositoryError::InvalidManifest {
                key: key.to_string(),
                reason: format!(
                    "the file is {size} bytes, the manifest says {}",
                    model.manifest.size
                ),
            });
        }
        let extension = model
            .file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("onnx");
        let path = self.dir.join(format!(
            "{}@{}.{}.{extension}",
            key.name(),
            key.version(),
            &sha256[..16]
        ));
        temp.persist(&path).map_err(|e| io_error(&path, e.error))?;
        // Read-only from here on: the engine maps it, nothing may write it.
        let _ = File::open(&path).and_then(|f| {
            let mut permissions = f.metadata()?.permissions();
            permissions.set_readonly(true);
            fs::set_permissions(&path, permissions)
        });
        Ok(StagedFile { path, sha256, size })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Bookkeeping only; a panic while holding it cannot leave it half-written
        // in a way that matters more than losing the process, so recover.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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

    #[test]
    fn stages_once_then_reuses_without_hashing() {
        let (_root, repo) = setup(&[("a", b"aaaa")]);
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path(), 100).unwrap();
        let model = repo.read(&ModelKey::new("a", "1").unwrap()).unwrap();
        let (first, reused) = staging.stage(&model).unwrap();
        assert!(!reused);
        assert_eq!(fs::read(&first.path).unwrap(), b"aaaa");
        let (second, reused) = staging.stage(&model).unwrap();
        assert!(reused);
        assert_eq!(first, second);
        let stats = staging.stats();
        assert_eq!((stats.hashes, stats.reuses, stats.bytes_used), (1, 1, 4));
    }

    #[test]
    fn a_mismatch_stages_nothing() {
        let (root, repo) = setup(&[("a", b"aaaa")]);
        fs::write(root.path().join("a/1/model.onnx"), b"aaab").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path(), 100).unwrap();
        let model = repo.read(&ModelKey::new("a", "1").unwrap()).unwrap();
        let err = staging.stage(&model).unwrap_err();
        assert!(
            matches!(err, RepositoryError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(staging.stats().bytes_used, 0);
    }

    #[test]
    fn evicts_least_recently_used_files_to_stay_in_budget() {
        let (_root, repo) = setup(&[("a", b"aaaa"), ("b", b"bbbb"), ("c", b"cccc")]);
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path(), 8).unwrap();
        let get = |n: &str| repo.read(&ModelKey::new(n, "1").unwrap()).unwrap();
        let (a, _) = staging.stage(&get("a")).unwrap();
        staging.stage(&get("b")).unwrap();
        staging.stage(&get("c")).unwrap();
        assert!(!a.path.exists(), "a was least recently used");
        let stats = staging.stats();
        assert_eq!((stats.bytes_used, stats.files, stats.evictions), (8, 2, 1));
        let err = Staging::open(tempfile::tempdir().unwrap().path(), 3)
            .unwrap()
            .stage(&get("a"))
            .unwrap_err();
        assert!(matches!(err, RepositoryError::StagingTooSmall { .. }));
    }

    #[test]
    fn open_clears_files_left_by_an_earlier_process() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old@1.0000.onnx"), b"x").unwrap();
        Staging::open(dir.path(), 10).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
