//! Repositories in Triton's layout: noticing one where ours was expected,
//! and `model-router import-triton`, which publishes each of its ONNX models.
//!
//! Triton keeps `<root>/<model>/<version>/model.onnx` (plus an optional
//! `<model>/config.pbtxt`) with no manifest; our repository needs
//! `manifest.json` beside each file (DESIGN section 2), so a Triton
//! repository served as it is lists no model at all.

use std::path::{Path, PathBuf};

use crate::repository::{ModelKey, PublishRequest, Repository, RepositoryError};

/// The file a Triton ONNX Runtime backend model version holds by default.
const TRITON_ONNX_FILE: &str = "model.onnx";

/// One ONNX model version of a Triton repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TritonModel {
    pub name: String,
    pub version: String,
    pub file: PathBuf,
}

/// Every `<model>/<version>/model.onnx` under `dir`, by name then version
/// (numeric order, as Triton orders versions). Other backends' models
/// (`model.plan`, `model.pt`, ...) and stray files are not listed.
pub fn triton_models(dir: &Path) -> std::io::Result<Vec<TritonModel>> {
    let mut models = Vec::new();
    for model in std::fs::read_dir(dir)? {
        let model = model?;
        if !model.file_type()?.is_dir() {
            continue;
        }
        let Ok(name) = model.file_name().into_string() else {
            continue;
        };
        for version in std::fs::read_dir(model.path())? {
            let version = version?;
            let Ok(version_name) = version.file_name().into_string() else {
                continue;
            };
            let file = version.path().join(TRITON_ONNX_FILE);
            if version.file_type()?.is_dir() && file.is_file() {
                models.push(TritonModel {
                    name: name.clone(),
                    version: version_name,
                    file,
                });
            }
        }
    }
    models.sort_by(|a, b| {
        let number = |m: &TritonModel| m.version.parse::<u64>().ok();
        (&a.name, number(a), &a.version).cmp(&(&b.name, number(b), &b.version))
    });
    Ok(models)
}

/// What happened to one Triton model version on import.
#[derive(Debug)]
pub enum Imported {
    Published(ModelKey),
    /// The version was already published with the same bytes: nothing to do.
    AlreadyThere(ModelKey),
    Failed {
        model: String,
        error: RepositoryError,
    },
}

/// Publishes every ONNX model of the Triton repository `dir` into
/// `repository` (verified and atomic, with its manifest, as `publish` does).
/// A version already published with the same sha256 is skipped, so an import
/// can be re-run; one that differs is a failure (versions are immutable).
pub fn import(repository: &Repository, dir: &Path) -> std::io::Result<Vec<Imported>> {
    let models = triton_models(dir)?;
    Ok(models
        .into_iter()
        .map(|model| import_one(repository, model))
        .collect())
}

fn import_one(repository: &Repository, model: TritonModel) -> Imported {
    let spec = format!("{}/{}", model.name, model.version);
    let request = PublishRequest {
        name: model.name.clone(),
        version: model.version.clone(),
        source: model.file.clone(),
        team: None,
        description: Some(format!("imported from Triton {}", model.file.display())),
    };
    match repository.publish(&request) {
        Ok((key, _)) => Imported::Published(key),
        Err(RepositoryError::AlreadyExists { key }) => match same_bytes(repository, &model) {
            Ok(Some(key)) => Imported::AlreadyThere(key),
            Ok(None) => Imported::Failed {
                model: spec,
                error: RepositoryError::AlreadyExists { key },
            },
            Err(error) => Imported::Failed { model: spec, error },
        },
        Err(error) => Imported::Failed { model: spec, error },
    }
}

/// The published key when the version in the repository holds exactly the
/// Triton file's bytes (by sha256).
fn same_bytes(
    repository: &Repository,
    model: &TritonModel,
) -> Result<Option<ModelKey>, RepositoryError> {
    use sha2::{Digest, Sha256};
    let key = ModelKey::new(&model.name, &model.version)?;
    let published = repository.read(&key)?;
    let unreadable = |e: std::io::Error| {
        RepositoryError::Publish(format!("reading {}: {e}", model.file.display()))
    };
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(&model.file).map_err(unreadable)?;
    std::io::copy(&mut file, &mut hasher).map_err(unreadable)?;
    let sha256 = hex::encode(hasher.finalize());
    Ok((sha256 == published.manifest.sha256).then_some(key))
}

/// A warning when `repository` holds no published (manifest-bearing) version,
/// saying what the root looks like instead; `None` when it holds some.
pub fn empty_repository_warning(repository: &Repository) -> Option<String> {
    let listed = repository.list();
    if let Ok(models) = &listed
        && models.values().any(|versions| !versions.is_empty())
    {
        return None;
    }
    let root = repository.root().display().to_string();
    if let Err(e) = listed {
        return Some(format!("the model repository {root} cannot be listed: {e}"));
    }
    let triton = triton_models(repository.root()).unwrap_or_default();
    Some(if triton.is_empty() {
        format!(
            "the model repository {root} holds no published model version \
             (<name>/<version>/manifest.json); publish one with `model-router publish`"
        )
    } else {
        format!(
            "the model repository {root} holds no published model version, but {} Triton-layout \
             ONNX model version(s) (<name>/<version>/model.onnx, no manifest.json), which are not served; \
             publish them with `model-router import-triton {root} --repo DIR`",
            triton.len()
        )
    })
}
