//! `manifest.json`: which file a version serves, its sha256 and size.

use serde::{Deserialize, Serialize};

use super::key::validate_segment;

/// A version's manifest (DESIGN section 2). Unknown fields are kept, so a
/// manifest read and written back loses nothing a team added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model file's name inside the version directory (`model.ort` or `model.onnx`).
    pub file: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The owning team (DESIGN section 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// RFC 3339 UTC time of publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Manifest {
    /// Parses and checks a manifest: the file is a plain name with a model
    /// extension, the hash is 64 hex digits. Returns why not, for the error.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let mut manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        validate_segment("manifest file", &manifest.file).map_err(|e| e.to_string())?;
        if !(manifest.file.ends_with(".ort") || manifest.file.ends_with(".onnx")) {
            return Err(format!(
                "file {:?} must end in .ort or .onnx",
                manifest.file
            ));
        }
        if manifest.sha256.len() != 64 || !manifest.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 {:?} is not 64 hex digits", manifest.sha256));
        }
        manifest.sha256.make_ascii_lowercase();
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn parses_and_keeps_unknown_fields() {
        let text = format!(
            r#"{{"file":"model.ort","sha256":"{}","size":4,"team":"fraud","owner_email":"a@b"}}"#,
            HASH.to_uppercase()
        );
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.sha256, HASH);
        assert_eq!(m.team.as_deref(), Some("fraud"));
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["owner_email"], "a@b");
    }

    #[test]
    fn rejects_paths_bad_hashes_and_missing_fields() {
        for bad in [
            format!(r#"{{"file":"../x.ort","sha256":"{HASH}","size":1}}"#),
            format!(r#"{{"file":"/etc/x.onnx","sha256":"{HASH}","size":1}}"#),
            format!(r#"{{"file":"model.bin","sha256":"{HASH}","size":1}}"#),
            r#"{"file":"model.ort","sha256":"abc","size":1}"#.to_string(),
            format!(r#"{{"file":"model.ort","sha256":"{HASH}"}}"#),
            "not json".to_string(),
        ] {
            assert!(Manifest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
