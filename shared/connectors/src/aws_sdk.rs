//! What the AWS connectors share: the SDK configuration for one system — region, endpoint,
//! timeouts and the access key from the system's secret (or the default credential chain)
//! — and the secret values to keep out of every message.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use deprov_core::ports::SecretSource;
use deprov_core::ConnectorError;

use crate::http;

pub(crate) const ACCESS_KEY_FIELD: &str = "access_key_id";
pub(crate) const SECRET_KEY_FIELD: &str = "secret_access_key";
pub(crate) const SESSION_TOKEN_FIELD: &str = "session_token";

/// Where one system's SDK clients connect, and as whom.
pub(crate) struct Target<'a> {
    pub system: &'a str,
    pub region: &'a str,
    pub endpoint_url: Option<&'a str>,
    pub timeout: Duration,
    /// The secret holding the access key; the default credential chain when absent.
    pub secret: Option<&'a str>,
    /// What to store in the secret, for the message when it is empty ("an IAM access key").
    pub key_kind: &'a str,
}

/// Names the credentials in a message that asks to fix them.
pub(crate) fn credential_source(secret: Option<&str>) -> String {
    match secret {
        Some(secret) => format!(
            "the access key in secret \"{secret}\" (fields \"{ACCESS_KEY_FIELD}\", \"{SECRET_KEY_FIELD}\")"
        ),
        None => "the default credential chain (the function's role or the environment)".to_string(),
    }
}

/// The SDK configuration, and the secret values it signs with (to redact from messages).
pub(crate) async fn load(
    target: Target<'_>,
    secrets: &Arc<dyn SecretSource>,
) -> Result<(SdkConfig, Vec<String>), ConnectorError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(target.region.to_string()))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(target.timeout)
                .build(),
        );
    if let Some(url) = target.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let mut values = Vec::new();
    if let Some(name) = target.secret {
        let what = "its AWS access key";
        let secret = secrets
            .secret(name)
            .await
            .map_err(|err| http::secret_error(target.system, what, &err))?;
        let field = |field: &str| {
            secret
                .field(field)
                .map(|v| v.trim().to_string())
                .map_err(|err| http::secret_error(target.system, what, &err))
        };
        let key_id = field(ACCESS_KEY_FIELD)?;
        let secret_key = field(SECRET_KEY_FIELD)?;
        let token = secret
            .field(SESSION_TOKEN_FIELD)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if key_id.is_empty() || secret_key.is_empty() {
            return Err(ConnectorError::InvalidConfig(format!(
                "system \"{}\": field \"{ACCESS_KEY_FIELD}\" or \"{SECRET_KEY_FIELD}\" of secret \"{name}\" is empty; store {} there",
                target.system, target.key_kind
            )));
        }
        values.extend([key_id.clone(), secret_key.clone()]);
        values.extend(token.clone());
        loader = loader.credentials_provider(aws_sdk_iam::config::Credentials::new(
            key_id,
            secret_key,
            token,
            None,
            "deprov-secret",
        ));
    }
    Ok((loader.load().await, values))
}
