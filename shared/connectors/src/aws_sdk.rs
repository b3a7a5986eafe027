//! What the AWS connectors share: the SDK configuration for one system — region, endpoint,
//! timeouts and the access key from the system's secret (or the default credential chain)
//! — the secret values to keep out of every message, and what an SDK error means to the
//! orchestrator.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
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

/// A paginated list call: every page's items, or the SDK error.
macro_rules! list_all {
    ($builder:expr) => {
        $builder.into_paginator().items().send().try_collect().await
    };
}
pub(crate) use list_all;

/// How one AWS service names its errors, for [`failure`].
pub(crate) struct Service {
    /// As messages name it: "IAM", "IAM Identity Center".
    pub name: &'static str,
    /// Codes that mean the thing asked about does not exist.
    pub not_found: &'static [&'static str],
    /// Codes of a failure on the service's side: worth another attempt.
    pub server_failure: &'static [&'static str],
    /// Codes of a concurrent change: worth another attempt.
    pub conflict: &'static [&'static str],
}

/// One call, as the messages about its failure describe it.
pub(crate) struct Call<'a> {
    pub system: &'a str,
    pub request: &'a str,
    pub user: &'a str,
    /// The credentials a refusal asks to fix (`credential_source`).
    pub credential_source: String,
    /// The permission a refusal asks to grant, e.g. `iam:ListAccessKeys`.
    pub permission: String,
    /// Where that permission is needed, e.g. `on the users deprov manages`.
    pub scope: String,
    /// Secret values that must not appear in any message.
    pub secrets: &'a [String],
}

const THROTTLED: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];
const REFUSED_CREDENTIALS: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "IncompleteSignature",
];
const ACCESS_DENIED: &[&str] = &["AccessDenied", "AccessDeniedException"];

/// What a failed call means to the orchestrator (throttled, transient, unauthorized,
/// permanent), with the secret values redacted; `None` when the service says the thing
/// asked about does not exist.
pub(crate) fn failure<E>(
    service: &Service,
    call: &Call<'_>,
    err: SdkError<E, HttpResponse>,
) -> Option<ConnectorError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    classify(service, call, err).map(|err| {
        call.secrets
            .iter()
            .fold(err, |err, value| http::redact(err, value))
    })
}

/// `None` when the error says the thing does not exist.
fn classify<E>(
    service: &Service,
    call: &Call<'_>,
    err: SdkError<E, HttpResponse>,
) -> Option<ConnectorError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let Call {
        system,
        request,
        user,
        ..
    } = call;
    let (name, credentials) = (service.name, &call.credential_source);
    let code = err.code().unwrap_or_default().to_string();
    let detail = err.message().map(http::snippet).unwrap_or_default();
    let status = match &err {
        SdkError::ServiceError(context) => Some(context.raw().status().as_u16()),
        SdkError::ResponseError(context) => Some(context.raw().status().as_u16()),
        _ => None,
    };
    let is = |codes: &[&str]| codes.contains(&code.as_str());
    Some(match &err {
        _ if is(service.not_found) => return None,
        _ if is(THROTTLED) => ConnectorError::Throttled {
            retry_after: None,
            message: format!(
                "system \"{system}\": {name} throttled {request} for user \"{user}\" ({code}: {detail})"
            ),
        },
        _ if is(REFUSED_CREDENTIALS) => ConnectorError::Unauthorized(format!(
            "system \"{system}\": AWS refused {credentials} ({code} on {request}); rotate or fix it"
        )),
        _ if is(ACCESS_DENIED) => ConnectorError::Unauthorized(format!(
            "system \"{system}\": AWS denied {request} to {credentials} ({code}: {detail}); grant it {} {}",
            call.permission, call.scope
        )),
        SdkError::TimeoutError(_) => ConnectorError::Transient(format!(
            "system \"{system}\": {request} for user \"{user}\" timed out"
        )),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ConnectorError::Transient(format!(
                "system \"{system}\": {request} for user \"{user}\" failed in transit: {}",
                DisplayErrorContext(&err)
            ))
        }
        SdkError::ConstructionFailure(_) => ConnectorError::Permanent(format!(
            "system \"{system}\": {request} for user \"{user}\" could not be built (check {credentials}): {}",
            DisplayErrorContext(&err)
        )),
        _ if is(service.server_failure) => ConnectorError::Transient(format!(
            "system \"{system}\": {name} failed {request} for user \"{user}\" ({code}: {detail})"
        )),
        // An error body the SDK could not read: the status says enough.
        _ if code.is_empty() && status == Some(403) => ConnectorError::Unauthorized(format!(
            "system \"{system}\": AWS refused {request} with HTTP 403 to {credentials}; rotate or fix it, or grant it {}",
            call.permission
        )),
        _ if code.is_empty() && status == Some(429) => ConnectorError::Throttled {
            retry_after: None,
            message: format!(
                "system \"{system}\": {name} throttled {request} for user \"{user}\" (HTTP 429)"
            ),
        },
        _ if status.is_some_and(|s| s >= 500) => ConnectorError::Transient(format!(
            "system \"{system}\": {name} answered {request} for user \"{user}\" with HTTP {} ({code}: {detail})",
            status.unwrap_or_default()
        )),
        _ if is(service.conflict) => ConnectorError::Transient(format!(
            "system \"{system}\": {request} for user \"{user}\" met a concurrent change ({detail}); retry"
        )),
        _ => ConnectorError::Permanent(format!(
            "system \"{system}\": {name} refused {request} for user \"{user}\" ({code}: {detail})"
        )),
    })
}
