//! Secrets Manager behind `SecretSource`: a secret is a JSON object of string fields (a bare
//! string is the field `token`), cached for a TTL so a warm Lambda does not fetch it per
//! task. Values are never logged or put in an error.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use deprov_core::ports::{Secret, SecretError, SecretSource};
use tokio::sync::Mutex;

pub struct SecretsManagerSource {
    client: Client,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Secret, Instant)>>,
}

impl SecretsManagerSource {
    pub fn new(client: Client, ttl: Duration) -> SecretsManagerSource {
        SecretsManagerSource {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

/// The fields of a secret string: a JSON object of strings, or a bare token.
pub fn parse_fields(name: &str, text: &str) -> Result<BTreeMap<String, String>, SecretError> {
    if !text.trim_start().starts_with('{') {
        return Ok(BTreeMap::from([("token".to_string(), text.to_string())]));
    }
    serde_json::from_str(text).map_err(|_| SecretError::Unreadable {
        name: name.to_string(),
        reason: "the secret string is not a JSON object of string fields".into(),
    })
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    async fn secret(&self, name: &str) -> Result<Secret, SecretError> {
        let mut cache = self.cache.lock().await;
        if let Some((secret, fetched)) = cache.get(name) {
            if fetched.elapsed() < self.ttl {
                return Ok(secret.clone());
            }
        }
        let output = self
            .client
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .map_err(|err| {
                let not_found = err
                    .as_service_error()
                    .is_some_and(|service| service.is_resource_not_found_exception());
                if not_found {
                    SecretError::NotFound(name.to_string())
                } else {
                    // The SDK error names the operation and cause, never the value.
                    SecretError::Unreadable {
                        name: name.to_string(),
                        reason: format!("{err}"),
                    }
                }
            })?;
        let text = output
            .secret_string
            .ok_or_else(|| SecretError::Unreadable {
                name: name.to_string(),
                reason: "the secret has no string value (binary secrets are not supported)".into(),
            })?;
        let secret = Secret::new(name, parse_fields(name, &text)?);
        cache.insert(name.to_string(), (secret.clone(), Instant::now()));
        Ok(secret)
    }
}
