//! Parse, then compile: raw policy JSON → validated `Policy`, or every error with its JSON path.
//!
//! - `raw`: the serde structs, `deny_unknown_fields` everywhere;
//! - `model`: the compiled policy every request reads;
//! - `compile`: the compiler, one file per compiled kind (provider, api_keys, client_certs,
//!   limit, route, condition, token source);
//! - `error`: `ConfigError` / `ConfigErrors`, shared with `crate::validate`.
//!
//! Everything is re-exported here: `crate::policy::Policy`, `crate::policy::Route`, ….

mod compile;
mod error;
mod model;
pub mod raw;

use serde_json::Value;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

impl Policy {
    /// Parses the JSON the filter receives from Envoy.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, Vec<ConfigError>> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("not valid JSON: {e}"),
            }]
        })?;
        Policy::try_from(value)
    }

    /// Parses YAML (Istio `pluginConfig`, files for `apiguard check`); same schema.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_yaml(text: &str) -> Result<Policy, Vec<ConfigError>> {
        let value: Value = yaml_serde::from_str(text).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("not valid YAML: {e}"),
            }]
        })?;
        Policy::try_from(value)
    }
}

impl TryFrom<Value> for Policy {
    type Error = Vec<ConfigError>;

    fn try_from(value: Value) -> Result<Policy, Vec<ConfigError>> {
        compile::compile(value)
    }
}

#[cfg(test)]
mod tests;
