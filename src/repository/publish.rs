//! Publishing a version atomically, and re-verifying published versions.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{Manifest, ModelKey, ModelName, Repository, RepositoryError};

/// Copies `source` to `dest` in one pass, hashing the bytes as they go, and
/// returns (sha256 hex, bytes copied). The one routine both staging and
/// publishing use, so a file is read once whatever it is copied for.
pub(crate) fn copy_hashing(
    source: &mut impl Read,
    dest: &mut impl Write,
) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        dest.write_all(&buffer[..n])?;
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// The sha256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    copy_hashing(&mut File::open(path)?, &mut io::sink())
}

/// What `model-router publish` was asked to do.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub name: String,
    pub version: String,
    /// The `.ort` or `.onnx` file to publish.
    pub source: PathBuf,
    pub team: Option<String>,
    pub description: Option<String>,
}

impl Repository {
    /// Publishes a new version: copies the file into a temporary directory
    /// beside the version (hashing as it copies), reads the copy back to check
    /// it, writes `manifest.json`, fsyncs, and renames the directory into place.
    /// Readers see the whole version or nothing; an existing version is never
    /// touched.
    pub fn publish(
        &self,
        request: &PublishRequest,
    ) -> Result<(ModelKey, Manifest), RepositoryError> {
        let key = ModelKey::new(&request.name, &request.version)?;
        let failed = |what: &str, e: io::Error| RepositoryError::Publish(format!("{what}: {e}"));
        let extension = match request.source.extension().and_then(|e| e.to_str()) {
            Some(ext @ ("ort" | "onnx")) => ext,
            _ => {
                return Err(RepositoryError::Publish(format!(
                    "{} must end in .ort or .onnx",
                    request.source.display()
                )));
            }
        };
        let model_dir = self.root.join(key.name().as_str());
        let final_dir = model_dir.join(key.version());
        if final_dir.symlink_metadata().is_ok() {
            return Err(RepositoryError::AlreadyExists {
                key: key.to_string(),
            });
        }
        fs::create_dir_all(&model_dir).map_err(|e| failed("creating the model directory", e))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".publish-{}-", key.version()))
            .tempdir_in(&model_dir)
            .map_err(|e| failed("creating a temporary directory", e))?;

        let file_name = format!("model.{extension}");
        let dest_path = staging.path().join(&file_name);
        let mut source = File::open(&request.source)
            .map_err(|e| failed(&request.source.display().to_string(), e))?;
        let mut dest =
            File::create(&dest_path).map_err(|e| failed("creating the model file", e))?;
        let (sha256, size) =
            copy_hashing(&mut source, &mut dest).map_err(|e| failed("copying", e))?;
        dest.sync_all()
            .map_err(|e| failed("fsync of the model file", e))?;
        drop(dest);
        // Read back what landed on the (possibly network) filesystem.
        let (written, _) = hash_file(&dest_path).map_err(|e| failed("reading the copy back", e))?;
        if written != sha256 {
            return Err(RepositoryError::ChecksumMismatch {
                key: key.to_string(),
                expected: sha256,
                actual: written,
            });
        }

        let manifest = Manifest {
            file: file_name,
            sha256,
            size,
            team: request.team.clone(),
            description: request.description.clone(),
            created: Some(rfc3339_now()),
            extra: Default::default(),
        };
        let manifest_json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| RepositoryError::Publish(e.to_string()))?;
        let mut file = File::create(staging.path().join("manifest.json"))
            .map_err(|e| failed("writing manifest.json", e))?;
        file.write_all(&manifest_json)
            .map_err(|e| failed("writing manifest.json", e))?;
        file.sync_all()
            .map_err(|e| failed("fsync of manifest.json", e))?;
        File::open(staging.path())
            .and_then(|d| d.sync_all())
            .map_err(|e| failed("fsync of the version directory", e))?;

        // Checked again just before the rename: rename(2) would replace an empty
        // directory that appeared meanwhile, and must never replace a version.
        if final_dir.symlink_metadata().is_ok() {
            return Err(RepositoryError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let staged = staging.keep();
        fs::rename(&staged, &final_dir).map_err(|e| {
            let _ = fs::remove_dir_all(&staged);
            failed("renaming into place", e)
        })?;
        File::open(&model_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| failed("fsync of the model directory", e))?;
        Ok((key, manifest))
    }
}

/// The result of re-hashing one version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub model: String,
    pub ok: bool,
    /// Why not, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Re-hashes every version (of `only`, or of every model) against its manifest.
pub fn verify(
    repository: &Repository,
    only: Option<&ModelName>,
) -> Result<Vec<VerifyReport>, RepositoryError> {
    let models = match only {
        Some(name) => [(name.to_string(), repository.versions(name)?)]
            .into_iter()
            .collect(),
        None => repository.list()?,
    };
    let mut reports = Vec::new();
    for (name, versions) in models {
        for version in versions {
            let key = ModelKey::new(&name, &version)?;
            let outcome = repository
                .read(&key)
                .and_then(|model| super::verify_file(&model));
            reports.push(VerifyReport {
                model: key.to_string(),
                ok: outcome.is_ok(),
                error: outcome.err().map(|e| e.to_string()),
            });
        }
    }
    Ok(reports)
}

/// The current UTC time as RFC 3339 (`2026-11-28T16:29:49Z`), without a date crate.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(source: &Path, version: &str) -> PublishRequest {
        PublishRequest {
            name: "m".into(),
            version: version.into(),
            source: source.to_path_buf(),
            team: Some("fraud".into()),
            description: None,
        }
    }

    #[test]
    fn publishes_atomically_and_refuses_to_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("../weights.ort");
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path().join(src.file_name().unwrap());
        fs::write(&src, b"model bytes").unwrap();
        let repo = Repository::open(root.path()).unwrap();

        let (key, manifest) = repo.publish(&request(&src, "1")).unwrap();
        assert_eq!(key.to_string(), "m/1");
        assert_eq!(manifest.size, 11);
        assert_eq!(manifest.sha256, hash_file(&src).unwrap().0);
        assert_eq!(
            fs::read(root.path().join("m/1/model.ort")).unwrap(),
            b"model bytes"
        );
        let read = repo.read(&key).unwrap();
        assert_eq!(read.manifest, manifest);
        assert!(read.manifest.created.unwrap().ends_with('Z'));

        let err = repo.publish(&request(&src, "1")).unwrap_err();
        assert!(matches!(err, RepositoryError::AlreadyExists { .. }));
        // Nothing temporary is left behind, and the first version is intact.
        let names: Vec<_> = fs::read_dir(root.path().join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["1"]);
        assert!(verify(&repo, None).unwrap().iter().all(|r| r.ok));
    }

    #[test]
    fn verify_reports_each_mismatch() {
        let root = tempfile::tempdir().unwrap();
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path().join("w.onnx");
        fs::write(&src, b"abc").unwrap();
        let repo = Repository::open(root.path()).unwrap();
        repo.publish(&request(&src, "1")).unwrap();
        repo.publish(&request(&src, "2")).unwrap();
        fs::write(root.path().join("m/2/model.onnx"), b"abd").unwrap();
        let reports = verify(&repo, None).unwrap();
        assert_eq!(reports.len(), 2);
        assert!(reports[0].ok);
        assert!(!reports[1].ok);
        assert!(reports[1].error.as_deref().unwrap().contains("sha256"));
    }

    #[test]
    fn verify_never_blocks_on_a_fifo_and_never_reads_past_the_manifest() {
        let root = tempfile::tempdir().unwrap();
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path().join("w.onnx");
        fs::write(&src, b"abc").unwrap();
        let repo = Repository::open(root.path()).unwrap();
        for version in ["1", "2"] {
            repo.publish(&request(&src, version)).unwrap();
        }
        let fifo = root.path().join("m/1/model.onnx");
        fs::remove_file(&fifo).unwrap();
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // A file longer than its manifest says (one that never ends, like
        // /dev/zero, is cut off the same way: one byte past the size).
        fs::write(root.path().join("m/2/model.onnx"), b"abcabc").unwrap();
        let reports = verify(&repo, None).unwrap();
        assert!(reports.iter().all(|r| !r.ok), "{reports:?}");
        assert!(
            reports[0]
                .error
                .as_deref()
                .unwrap()
                .contains("not a regular file")
        );
        assert!(
            reports[1]
                .error
                .as_deref()
                .unwrap()
                .contains("6 bytes, the manifest says 3")
        );
    }

    #[test]
    fn refuses_other_extensions_and_bad_names() {
        let root = tempfile::tempdir().unwrap();
        let repo = Repository::open(root.path()).unwrap();
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path().join("w.bin");
        fs::write(&src, b"abc").unwrap();
        assert!(matches!(
            repo.publish(&request(&src, "1")),
            Err(RepositoryError::Publish(_))
        ));
        let src = src_dir.path().join("w.ort");
        fs::write(&src, b"abc").unwrap();
        assert!(matches!(
            repo.publish(&request(&src, "..")),
            Err(RepositoryError::InvalidName { .. })
        ));
    }

    #[test]
    fn rfc3339_has_the_right_shape() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"));
    }
}
