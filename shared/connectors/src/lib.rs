//! deprov-connectors: one module per target system, each behind the core `Connector`
//! trait. `build` turns a policy's system entry into a connector.

use std::sync::Arc;

use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::{Connector, ConnectorError};

pub mod aws_iam;
mod aws_sdk;
pub mod aws_sso;
pub mod coalesce;
pub mod discovery;
pub mod github;
pub mod google;
pub(crate) mod http;
pub mod ldap;
pub mod memory;
pub mod msgraph;
pub mod okta;
pub mod postgres;
pub mod scim;
pub mod slack;

pub use coalesce::coalesce_discovery;
pub use discovery::{discover, list_accounts, list_all};

/// The connector kinds a policy may name.
pub const KINDS: &[&str] = &[
    "scim", "okta", "msgraph", "postgres", "ldap", "slack", "google", "github", "aws_iam",
    "aws_sso",
];

/// Builds the connector of one policy system. Secrets are resolved lazily, at first use.
pub fn build(
    system: &str,
    config: &SystemConfig,
    secrets: Arc<dyn SecretSource>,
) -> Result<Arc<dyn Connector>, ConnectorError> {
    match config.kind.as_str() {
        "scim" => Ok(Arc::new(scim::ScimConnector::from_config(
            system, config, secrets,
        )?)),
        "okta" => Ok(Arc::new(okta::OktaConnector::from_config(
            system, config, secrets,
        )?)),
        "msgraph" => Ok(Arc::new(msgraph::GraphConnector::from_config(
            system, config, secrets,
        )?)),
        "postgres" => Ok(Arc::new(postgres::PostgresConnector::from_config(
            system, config, secrets,
        )?)),
        "ldap" => Ok(Arc::new(ldap::LdapConnector::from_config(
            system, config, secrets,
        )?)),
        "slack" => Ok(Arc::new(slack::SlackConnector::from_config(
            system, config, secrets,
        )?)),
        "google" => Ok(Arc::new(google::GoogleConnector::from_config(
            system, config, secrets,
        )?)),
        "github" => Ok(Arc::new(github::GitHubConnector::from_config(
            system, config, secrets,
        )?)),
        "aws_iam" => Ok(Arc::new(aws_iam::AwsIamConnector::from_config(
            system, config, secrets,
        )?)),
        "aws_sso" => Ok(Arc::new(aws_sso::AwsSsoConnector::from_config(
            system, config, secrets,
        )?)),
        other => Err(unknown_kind(system, other)),
    }
}

/// Problems with a system's connection settings, for `deprov policy check`.
pub fn check(system: &str, config: &SystemConfig) -> Vec<String> {
    match config.kind.as_str() {
        "scim" => scim::ScimConnector::check_config(system, config),
        "okta" => okta::OktaConnector::check_config(system, config),
        "msgraph" => msgraph::GraphConnector::check_config(system, config),
        "postgres" => postgres::PostgresConnector::check_config(system, config),
        "ldap" => ldap::LdapConnector::check_config(system, config),
        "slack" => slack::SlackConnector::check_config(system, config),
        "google" => google::GoogleConnector::check_config(system, config),
        "github" => github::GitHubConnector::check_config(system, config),
        "aws_iam" => aws_iam::AwsIamConnector::check_config(system, config),
        "aws_sso" => aws_sso::AwsSsoConnector::check_config(system, config),
        other => vec![unknown_kind(system, other).to_string()],
    }
}

fn unknown_kind(system: &str, kind: &str) -> ConnectorError {
    ConnectorError::InvalidConfig(format!(
        "systems.{system}.kind = \"{kind}\" is not a connector kind; known kinds: {}",
        KINDS.join(", ")
    ))
}

/// A policy system entry of `kind` for unit tests, with `connection` and an optional secret.
#[cfg(test)]
pub(crate) fn test_config(
    kind: &str,
    connection: serde_json::Value,
    secret: Option<&str>,
) -> SystemConfig {
    let mut value = serde_json::json!({"kind": kind, "connection": connection});
    if let Some(secret) = secret {
        value["secret"] = serde_json::json!(secret);
    }
    serde_json::from_value(value).unwrap_or_else(|err| panic!("test system config: {err}"))
}
