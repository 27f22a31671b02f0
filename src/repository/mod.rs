//! The model repository (DESIGN section 2): finding a version's manifest and
//! file under `MODEL_ROOT`, resolving `latest` and aliases, publishing and
//! verifying. Nothing here opens a path outside the root.

mod fetch;
mod key;
mod manifest;
mod publish;
mod staging;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use fetch::{FetchOptions, VerifiedBytes, fetch, verify_file};
pub use key::{MAX_SEGMENT_LEN, ModelKey, ModelName, validate_segment};
pub use manifest::Manifest;
pub use publish::{PublishRequest, VerifyReport, hash_file, verify};
pub use staging::{StageSource, Staged, StagedFile, Staging, StagingStats};

/// The most a manifest or `aliases.json` may weigh; anything larger is refused
/// unread (a repository file that never ends must not fill memory).
const METADATA_LIMIT: u64 = 1 << 20;

/// Resolutions of `latest` and aliases kept at most this many; past it the
/// memory is cleared (many distinct names only cost re-reads, never memory).
const RESOLUTIONS_LIMIT: usize = 10_000;

/// Errors of the repository and staging layers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepositoryError {
    #[error("invalid {what} {value:?}: {reason} (expected [A-Za-z0-9][A-Za-z0-9._-]{{0,127}})")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("model {name:?} is not in the repository")]
    ModelNotFound { name: String },
    #[error("model {name:?} has no version {version:?}; available: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    VersionNotFound {
        name: String,
        version: String,
        available: Vec<String>,
    },
    /// A version whose directory, manifest or model file resolves outside
    /// the root (a symlink pointing out): treated as absent, and said so.
    #[error(
        "model {key} leads outside MODEL_ROOT ({path} resolves elsewhere); a symlink out of the repository is never followed, so this version is treated as absent"
    )]
    OutsideRoot { key: String, path: String },
    #[error(
        "model {key}: the file's sha256 is {actual}, but its manifest says {expected}; it was not loaded"
    )]
    ChecksumMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    #[error("model {key}: invalid manifest: {reason}")]
    InvalidManifest { key: String, reason: String },
    #[error("the model repository could not be read at {path}: {reason}; retry later")]
    Unavailable { path: String, reason: String },
    #[error(
        "{what} did not finish within {seconds} s (MODEL_LOAD_TIMEOUT_SECONDS): the model repository may be stalled; \
         it goes on in the background, retry later"
    )]
    Timeout { what: String, seconds: f64 },
    #[error(
        "{key} already exists; published versions are immutable, publish a new version instead"
    )]
    AlreadyExists { key: String },
    #[error("publish failed: {0}")]
    Publish(String),
}

impl RepositoryError {
    fn io(path: &Path, error: &io::Error) -> RepositoryError {
        RepositoryError::Unavailable {
            path: path.display().to_string(),
            reason: error.to_string(),
        }
    }
}

/// What the router knows about one published version once its manifest is read.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub key: ModelKey,
    pub manifest: Manifest,
    /// The model file, canonical and inside the root.
    pub file: PathBuf,
}

/// The repository of models under one root directory.
///
/// Cheap to clone (clones share what they remember); holds no open files.
/// Manifests are read from disk on every load. What a version string
/// (`latest`, an alias, a concrete version) resolved to is remembered for
/// its resolve TTL (`RESOLVE_CACHE_SECONDS`), so hot `latest` and
/// alias requests cost no repository round trip: a newly published version or
/// a changed alias is seen within that time (immediately with a TTL of 0).
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    resolve_ttl: Duration,
    /// `(name, version string)` -> (concrete version, when it was read). A std
    /// Mutex: held for a map lookup or insert only, never across I/O.
    resolutions: Arc<Mutex<Resolutions>>,
}

/// `(name, version string)` -> (concrete version, when it was read).
type Resolutions = HashMap<(String, String), (String, Instant)>;

impl Repository {
    /// Opens the repository at `root` (which must exist; it may itself be a symlink,
    /// such as an EFS mount point).
    pub fn open(root: &Path) -> Result<Repository, RepositoryError> {
        let root = root
            .canonicalize()
            .map_err(|e| RepositoryError::io(root, &e))?;
        if !root.is_dir() {
            return Err(RepositoryError::Unavailable {
                path: root.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        Ok(Repository {
            root,
            resolve_ttl: Duration::ZERO,
            resolutions: Arc::default(),
        })
    }

    /// Remembers resolutions of version strings for `ttl` (0: never).
    pub fn with_resolve_ttl(mut self, ttl: Duration) -> Repository {
        self.resolve_ttl = ttl;
        self
    }

    /// What `version` of `name` resolved to less than the TTL ago, from memory
    /// only (no I/O).
    pub fn remembered(&self, name: &ModelName, version: &str) -> Option<String> {
        if self.resolve_ttl.is_zero() {
            return None;
        }
        let resolutions = self.resolutions.lock().unwrap_or_else(|p| p.into_inner());
        let (concrete, at) = resolutions.get(&(name.to_string(), version.to_string()))?;
        (at.elapsed() < self.resolve_ttl).then(|| concrete.clone())
    }

    fn remember(&self, name: &ModelName, version: &str, concrete: &str) {
        if self.resolve_ttl.is_zero() {
            return;
        }
        let mut resolutions = self.resolutions.lock().unwrap_or_else(|p| p.into_inner());
        if resolutions.len() >= RESOLUTIONS_LIMIT {
            resolutions.clear();
        }
        resolutions.insert(
            (name.to_string(), version.to_string()),
            (concrete.to_string(), Instant::now()),
        );
    }

    fn forget(&self, name: &ModelName, version: &str) {
        self.resolutions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(name.to_string(), version.to_string()));
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `version` (a version, `latest`, or an alias from `aliases.json`)
    /// to a published version and reads its manifest.
    pub fn resolve(
        &self,
        name: &ModelName,
        version: &str,
    ) -> Result<ResolvedModel, RepositoryError> {
        validate_segment("model version", version)?;
        if let Some(concrete) = self.remembered(name, version) {
            match self.read(&ModelKey::from_parts(name.clone(), concrete)?) {
                Ok(model) => return Ok(model),
                // Gone since: resolve afresh.
                Err(_) => self.forget(name, version),
            }
        }
        let versions = self.versions(name)?;
        let concrete = if versions.iter().any(|v| v == version) {
            version.to_string()
        } else if version == "latest" {
            versions
                .last()
                .cloned()
                .ok_or_else(|| RepositoryError::VersionNotFound {
                    name: name.to_string(),
                    version: version.into(),
                    available: vec![],
                })?
        } else {
            match self.aliases(name)?.get(version) {
                Some(target) if versions.contains(target) => target.clone(),
                _ => {
                    return Err(RepositoryError::VersionNotFound {
                        name: name.to_string(),
                        version: version.to_string(),
                        available: versions,
                    });
                }
            }
        };
        let model = self.read(&ModelKey::from_parts(name.clone(), concrete)?)?;
        self.remember(name, version, model.key.version());
        Ok(model)
    }

    /// Reads the manifest of one concrete version and locates its file.
    pub fn read(&self, key: &ModelKey) -> Result<ResolvedModel, RepositoryError> {
        let dir = self.root.join(key.name().as_str()).join(key.version());
        let manifest_path = self.inside_root(&dir.join("manifest.json"), key)?;
        let bytes = fetch::read_small(&manifest_path, METADATA_LIMIT)
            .map_err(|e| self.not_found_or_unavailable(key, &manifest_path, e))?;
        let manifest =
            Manifest::parse(&bytes).map_err(|reason| RepositoryError::InvalidManifest {
                key: key.to_string(),
                reason,
            })?;
        let file = self.inside_root(&dir.join(&manifest.file), key)?;
        Ok(ResolvedModel {
            key: key.clone(),
            manifest,
            file,
        })
    }

    /// The published versions of a model, in `latest` order (numeric when every
    /// version is a number, else lexical), highest last.
    pub fn versions(&self, name: &ModelName) -> Result<Vec<String>, RepositoryError> {
        let dir = self.root.join(name.as_str());
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                // Not found only if the root itself is there to say so: a
                // vanished or unreadable mount is an outage (503), not a 404
                // that clients would not retry.
                self.check_root()?;
                return Err(RepositoryError::ModelNotFound {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(RepositoryError::io(&dir, &e)),
        };
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RepositoryError::io(&dir, &e))?;
            let Ok(version) = entry.file_name().into_string() else {
                continue;
            };
            // Temporary publish directories start with '.', so they never validate.
            if validate_segment("model version", &version).is_err() {
                continue;
            }
            let manifest = entry.path().join("manifest.json");
            match std::fs::metadata(&manifest) {
                Ok(metadata) if metadata.is_file() => versions.push(version),
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.kind() == io::ErrorKind::NotADirectory => {}
                // An unreadable version directory hides nothing: it is an error.
                Err(e) => return Err(RepositoryError::io(&manifest, &e)),
            }
        }
        if versions.is_empty() && !regular_file_exists(&dir.join("aliases.json"))? {
            // A directory with no published version is not a model (yet).
            return Err(RepositoryError::ModelNotFound {
                name: name.to_string(),
            });
        }
        sort_versions(&mut versions);
        Ok(versions)
    }

    /// `aliases.json` of a model (`{"stable": "3"}`), empty when absent.
    pub fn aliases(&self, name: &ModelName) -> Result<BTreeMap<String, String>, RepositoryError> {
        let path = self.root.join(name.as_str()).join("aliases.json");
        match fetch::read_small(&path, METADATA_LIMIT) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| RepositoryError::InvalidManifest {
                    key: format!("{name}/aliases.json"),
                    reason: e.to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                Err(RepositoryError::InvalidManifest {
                    key: format!("{name}/aliases.json"),
                    reason: e.to_string(),
                })
            }
            Err(e) => Err(RepositoryError::io(&path, &e)),
        }
    }

    /// The root is there and readable: `Unavailable` otherwise.
    fn check_root(&self) -> Result<(), RepositoryError> {
        match std::fs::read_dir(&self.root) {
            Ok(_) => Ok(()),
            Err(e) => Err(RepositoryError::io(&self.root, &e)),
        }
    }

    /// Every model in the repository with its versions, by name.
    pub fn list(&self) -> Result<BTreeMap<String, Vec<String>>, RepositoryError> {
        let entries =
            std::fs::read_dir(&self.root).map_err(|e| RepositoryError::io(&self.root, &e))?;
        let mut models = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| RepositoryError::io(&self.root, &e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(name) = ModelName::new(&name) else {
                continue;
            };
            match self.versions(&name) {
                Ok(versions) => {
                    models.insert(name.to_string(), versions);
                }
                Err(RepositoryError::ModelNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(models)
    }

    /// Canonicalises `path` and refuses anything that resolves outside the root
    /// (a symlink pointing out, for instance) as if it did not exist.
    fn inside_root(&self, path: &Path, key: &ModelKey) -> Result<PathBuf, RepositoryError> {
        let canonical = path
            .canonicalize()
            .map_err(|e| self.not_found_or_unavailable(key, path, e))?;
        if canonical.starts_with(&self.root) {
            Ok(canonical)
        } else {
            tracing::warn!(path = %path.display(), "refused a path that leaves MODEL_ROOT");
            Err(RepositoryError::OutsideRoot {
                key: key.to_string(),
                path: path
                    .strip_prefix(&self.root)
                    .unwrap_or(path)
                    .display()
                    .to_string(),
            })
        }
    }

    fn not_found_or_unavailable(
        &self,
        key: &ModelKey,
        path: &Path,
        error: io::Error,
    ) -> RepositoryError {
        match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => self.version_not_found(key),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                RepositoryError::InvalidManifest {
                    key: key.to_string(),
                    reason: format!("{}: {error}", path.display()),
                }
            }
            _ => RepositoryError::io(path, &error),
        }
    }

    fn version_not_found(&self, key: &ModelKey) -> RepositoryError {
        match self.versions(key.name()) {
            Ok(available) => RepositoryError::VersionNotFound {
                name: key.name().to_string(),
                version: key.version().to_string(),
                available,
            },
            Err(e) => e,
        }
    }
}

/// Whether `path` is a regular file; an error other than "not there" is
/// `Unavailable`.
fn regular_file_exists(path: &Path) -> Result<bool, RepositoryError> {
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(metadata.is_file()),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(false)
        }
        Err(e) => Err(RepositoryError::io(path, &e)),
    }
}

pub(crate) fn open_no_follow(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Sorts versions in `latest` order, highest last: numeric when every version
/// is a number, else lexical (one rule for the whole list, so the order is total).
pub fn sort_versions(versions: &mut [String]) {
    if versions.iter().all(|v| v.parse::<u64>().is_ok()) {
        versions.sort_by_key(|v| v.parse::<u64>().unwrap_or(0));
    } else {
        versions.sort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn publish_fake(root: &Path, name: &str, version: &str, bytes: &[u8]) {
        let dir = root.join(name).join(version);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("model.onnx"), bytes).unwrap();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        fs::write(
            dir.join("manifest.json"),
            format!(
                r#"{{"file":"model.onnx","sha256":"{sha}","size":{}}}"#,
                bytes.len()
            ),
        )
        .unwrap();
    }

    #[test]
    fn resolves_versions_latest_and_aliases() {
        let tmp = tempfile::tempdir().unwrap();
        for v in ["2", "10", "9"] {
            publish_fake(tmp.path(), "m", v, v.as_bytes());
        }
        fs::write(tmp.path().join("m/aliases.json"), r#"{"stable": "9"}"#).unwrap();
        let repo = Repository::open(tmp.path()).unwrap();
        let name = ModelName::new("m").unwrap();
        assert_eq!(repo.versions(&name).unwrap(), ["2", "9", "10"]);
        assert_eq!(repo.resolve(&name, "latest").unwrap().key.version(), "10");
        assert_eq!(repo.resolve(&name, "stable").unwrap().key.version(), "9");
        assert_eq!(repo.resolve(&name, "2").unwrap().manifest.size, 1);
        let err = repo.resolve(&name, "3").unwrap_err();
        assert!(
            matches!(err, RepositoryError::VersionNotFound { ref available, .. } if available == &["2", "9", "10"])
        );
        let err = repo
            .resolve(&ModelName::new("nope").unwrap(), "1")
            .unwrap_err();
        assert!(matches!(err, RepositoryError::ModelNotFound { .. }));
        assert_eq!(repo.list().unwrap()["m"], ["2", "9", "10"]);
    }

    #[test]
    fn lexical_order_when_versions_are_not_all_numbers() {
        let mut v: Vec<String> = ["b", "10", "a", "9"].map(String::from).to_vec();
        sort_versions(&mut v);
        assert_eq!(v, ["10", "9", "a", "b"]);
        let mut v: Vec<String> = ["10", "9", "100"].map(String::from).to_vec();
        sort_versions(&mut v);
        assert_eq!(v, ["9", "10", "100"]);
    }

    #[test]
    fn a_symlink_out_of_the_root_is_not_found() {
        let outside = tempfile::tempdir().unwrap();
        publish_fake(outside.path(), "secret", "1", b"secret");
        let tmp = tempfile::tempdir().unwrap();
        publish_fake(tmp.path(), "m", "1", b"x");
        std::os::unix::fs::symlink(outside.path().join("secret/1"), tmp.path().join("m/2"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tmp.path().join("evil")).unwrap();
        let repo = Repository::open(tmp.path()).unwrap();
        let err = repo.read(&ModelKey::new("m", "2").unwrap()).unwrap_err();
        assert!(matches!(err, RepositoryError::OutsideRoot { .. }), "{err}");
        assert_eq!(crate::error::Error::from(err).code(), "version_not_found");
        let err = repo.read(&ModelKey::new("evil", "1").unwrap()).unwrap_err();
        assert!(
            matches!(
                err,
                RepositoryError::OutsideRoot { .. } | RepositoryError::ModelNotFound { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_manifest_pointing_through_a_symlink_out_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("weights.onnx"), b"x").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        publish_fake(tmp.path(), "m", "1", b"x");
        fs::remove_file(tmp.path().join("m/1/model.onnx")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("weights.onnx"),
            tmp.path().join("m/1/model.onnx"),
        )
        .unwrap();
        let repo = Repository::open(tmp.path()).unwrap();
        assert!(repo.read(&ModelKey::new("m", "1").unwrap()).is_err());
    }
}
