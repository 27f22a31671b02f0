//! Validated model names and versions: checked before the filesystem is touched.

use std::fmt;

use super::RepositoryError;

/// The longest name or version accepted (DESIGN section 2: 1 + 127 characters).
pub const MAX_SEGMENT_LEN: usize = 128;

/// Checks one path segment against `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, never `.`
/// or `..`. Everything that can leave a directory (`/`, `\`, `..`, NUL, an
/// absolute path, an empty string) fails here.
pub fn validate_segment(what: &'static str, value: &str) -> Result<(), RepositoryError> {
    let invalid = |reason| RepositoryError::InvalidName {
        what,
        value: value.to_string(),
        reason,
    };
    let mut chars = value.chars();
    match chars.next() {
        None => return Err(invalid("it is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(invalid("it must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if value.len() > MAX_SEGMENT_LEN {
        return Err(invalid("it is longer than 128 characters"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    if value == "." || value == ".." {
        return Err(invalid("'.' and '..' are not names"));
    }
    Ok(())
}

/// A model name that passed [`validate_segment`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

impl ModelName {
    pub fn new(name: &str) -> Result<ModelName, RepositoryError> {
        validate_segment("model name", name)?;
        Ok(ModelName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One concrete, published version of one model: the cache's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    name: ModelName,
    version: String,
}

impl ModelKey {
    pub fn new(name: &str, version: &str) -> Result<ModelKey, RepositoryError> {
        let name = ModelName::new(name)?;
        validate_segment("model version", version)?;
        Ok(ModelKey {
            name,
            version: version.to_string(),
        })
    }

    pub(crate) fn from_parts(
        name: ModelName,
        version: String,
    ) -> Result<ModelKey, RepositoryError> {
        validate_segment("model version", &version)?;
        Ok(ModelKey { name, version })
    }

    /// Parses `name/version`, the form admin events and `PRELOAD_MODELS` use.
    pub fn parse(spec: &str) -> Result<ModelKey, RepositoryError> {
        match spec.split_once('/') {
            Some((name, version)) => ModelKey::new(name, version),
            None => Err(RepositoryError::InvalidName {
                what: "model",
                value: spec.to_string(),
                reason: "expected name/version",
            }),
        }
    }

    pub fn name(&self) -> &ModelName {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "a",
            "fraud-model",
            "ranker_v2",
            "1",
            "2024.11.28",
            "A.b-c_d",
            &"x".repeat(128),
        ] {
            validate_segment("model name", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn rejects_everything_that_could_leave_the_root() {
        let long = "x".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a\\b",
            "/etc/passwd",
            ".hidden",
            "-x",
            "_x",
            "a b",
            "a\0b",
            "é",
            "%2e%2e",
            long.as_str(),
        ] {
            let err = validate_segment("model name", bad).expect_err(bad);
            assert!(matches!(err, RepositoryError::InvalidName { .. }), "{bad}");
        }
    }

    #[test]
    fn parses_name_slash_version() {
        let key = ModelKey::parse("fraud/3").unwrap();
        assert_eq!((key.name().as_str(), key.version()), ("fraud", "3"));
        assert_eq!(key.to_string(), "fraud/3");
        assert!(ModelKey::parse("fraud").is_err());
        assert!(ModelKey::parse("fraud/3/x").is_err());
        assert!(ModelKey::parse("../3").is_err());
    }
}
