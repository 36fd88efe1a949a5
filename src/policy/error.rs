//! Configuration errors, shared by the policy compiler and `crate::validate`: every
//! mistake located by its JSON path, all of them collected and reported at once.

use std::collections::HashSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// One problem in a policy, located by its JSON path (`providers[0].jwks.remote.uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "policy: {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects errors so a whole policy is reported at once. Compilers take `&mut ConfigErrors`,
/// push what they find and go on; a part is kept only when it added no error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Adds errors found by a compiler that reports them apart (`Result<_, ConfigErrors>`).
    pub fn append(&mut self, mut other: ConfigErrors) {
        self.0.append(&mut other.0);
    }

    /// The value of a compile step, taking its errors in: `Some` only when it succeeded.
    pub fn take_ok<T>(&mut self, result: Result<T, ConfigErrors>) -> Option<T> {
        result.map_err(|errors| self.append(errors)).ok()
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }

    /// `Ok(value)` when nothing was collected, else every error.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Parses every item of the list `list` strictly and checks that its name is unique in
    /// `names`; returns the items that parsed, each with its JSON path.
    pub(crate) fn parse_named<T: DeserializeOwned>(
        &mut self,
        items: Vec<Value>,
        list: &str,
        kind: &str,
        names: &mut HashSet<String>,
        name_of: impl Fn(&T) -> &String,
    ) -> Vec<(String, T)> {
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("{list}[{i}]");
            let Some(parsed) = self.parse::<T>(item, &path) else {
                continue;
            };
            let name = name_of(&parsed);
            if !names.insert(name.clone()) {
                self.push(
                    format!("{path}.name"),
                    format!("duplicate {kind} name `{name}`"),
                );
            }
            out.push((path, parsed));
        }
        out
    }

    /// Deserializes one item strictly, recording the failing field's full JSON path.
    pub(crate) fn parse<T: DeserializeOwned>(&mut self, value: Value, base: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = match (base.is_empty(), inner.as_str()) {
                    (_, ".") => base.to_string(),
                    (true, _) => inner,
                    (false, _) if inner.starts_with('[') => format!("{base}{inner}"),
                    (false, _) => format!("{base}.{inner}"),
                };
                self.push(path, e.into_inner().to_string());
                None
            }
        }
    }
}

/// Read like the list it is (`len`, `is_empty`, `iter`, `[i]`).
impl std::ops::Deref for ConfigErrors {
    type Target = [ConfigError];

    fn deref(&self) -> &[ConfigError] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<ConfigErrors> for Vec<ConfigError> {
    fn from(errors: ConfigErrors) -> Self {
        errors.0
    }
}
