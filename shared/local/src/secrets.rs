//! Local secrets: a TOML file of named secrets, overridable per secret from the
//! environment. Values are never logged or echoed in errors.
//!
//! ```toml
//! ["deprov/connector/crm"]
//! token = "…"
//! ```
//! `DEPROV_SECRET_DEPROV_CONNECTOR_CRM` (the name upper-cased, every other character `_`)
//! overrides it: a JSON object of fields, or a bare string taken as field `token`.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use deprov_core::ports::{Secret, SecretError, SecretSource};

#[derive(Default)]
pub struct LocalSecrets {
    file: BTreeMap<String, BTreeMap<String, String>>,
}

impl LocalSecrets {
    /// Reads the secrets file, if given. Errors name the file and the problem, never a value.
    pub fn load(path: Option<&Path>) -> Result<LocalSecrets, String> {
        let Some(path) = path else {
            return Ok(LocalSecrets::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read secrets file {}: {err}", path.display()))?;
        let file = toml_edit::de::from_str(&text).map_err(|err| {
            format!(
                "secrets file {} must be tables of string fields ([\"name\"] field = \"value\"): {}",
                path.display(),
                err.message()
            )
        })?;
        Ok(LocalSecrets { file })
    }

    /// Adds one field of one secret (for embedded setups such as `deprov demo`).
    pub fn with(mut self, name: &str, field: &str, value: &str) -> LocalSecrets {
        self.file
            .entry(name.to_string())
            .or_default()
            .insert(field.to_string(), value.to_string());
        self
    }

    /// The environment variable that overrides secret `name`.
    pub fn env_name(name: &str) -> String {
        let mapped: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("DEPROV_SECRET_{mapped}")
    }
}

#[async_trait]
impl SecretSource for LocalSecrets {
    async fn secret(&self, name: &str) -> Result<Secret, SecretError> {
        let variable = Self::env_name(name);
        if let Ok(value) = std::env::var(&variable) {
            let fields = if value.trim_start().starts_with('{') {
                serde_json::from_str::<BTreeMap<String, String>>(&value).map_err(|_| {
                    SecretError::Unreadable {
                        name: name.to_string(),
                        reason: format!("{variable} is not a JSON object of string fields"),
                    }
                })?
            } else {
                BTreeMap::from([("token".to_string(), value)])
            };
            return Ok(Secret::new(name, fields));
        }
        self.file
            .get(name)
            .map(|fields| Secret::new(name, fields.clone()))
            .ok_or_else(|| SecretError::Unreadable {
                name: name.to_string(),
                reason: format!(
                    "not found; set {variable} or add [\"{name}\"] to the secrets file (--secrets)"
                ),
            })
    }
}
