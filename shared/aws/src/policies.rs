//! The config table: versioned policy documents. A version is written once and never
//! changes (an auditor must be able to read the rules a plan used); `ACTIVE` names the
//! version new plans use.
//!
//! Items (`pk`/`sk` strings): `POLICY` / `VERSION#<version>` with `document`;
//! `POLICY` / `ACTIVE` with `version`.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use deprov_core::ports::{PolicySource, StoreError};
use deprov_core::Policy;

fn backend<E: std::fmt::Debug>(what: &str, err: E) -> StoreError {
    StoreError::Backend(format!("DynamoDB {what}: {err:?}"))
}

#[derive(Clone)]
pub struct DynamoPolicyStore {
    client: Client,
    table: String,
}

impl DynamoPolicyStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoPolicyStore {
        DynamoPolicyStore {
            client,
            table: table.into(),
        }
    }

    /// Stores a validated policy under its version. Storing the same document again is a
    /// no-op; another document under a used version is refused.
    pub async fn put(&self, policy_text: &str) -> Result<String, StoreError> {
        let policy =
            Policy::parse(policy_text).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S("POLICY".into()))
            .item(
                "sk",
                AttributeValue::S(format!("VERSION#{}", policy.version)),
            )
            .item("document", AttributeValue::S(policy_text.to_string()))
            .condition_expression("attribute_not_exists(pk) OR document = :document")
            .expression_attribute_values(":document", AttributeValue::S(policy_text.to_string()))
            .send()
            .await;
        match written {
            Ok(_) => Ok(policy.version),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::Corrupt(format!(
                    "policy version \"{}\" is already stored with another document; give the changed policy a new version",
                    policy.version
                )))
            }
            Err(err) => Err(backend("PutItem", err)),
        }
    }

    /// Makes a stored version the one new plans use.
    pub async fn activate(&self, version: &str) -> Result<(), StoreError> {
        if self.document(version).await?.is_none() {
            return Err(StoreError::Corrupt(format!(
                "policy version \"{version}\" is not stored; put it first"
            )));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S("POLICY".into()))
            .item("sk", AttributeValue::S("ACTIVE".into()))
            .item("version", AttributeValue::S(version.to_string()))
            .send()
            .await
            .map_err(|err| backend("PutItem", err))?;
        Ok(())
    }

    /// The document stored under `version`.
    pub async fn document(&self, version: &str) -> Result<Option<String>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S("POLICY".into()))
            .key("sk", AttributeValue::S(format!("VERSION#{version}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| backend("GetItem", err))?;
        Ok(item
            .item
            .and_then(|item| item.get("document").and_then(|v| v.as_s().ok()).cloned()))
    }

    /// The parsed policy of `version`.
    pub async fn policy(&self, version: &str) -> Result<Policy, StoreError> {
        let text = self.document(version).await?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "policy version \"{version}\" is not in the config table"
            ))
        })?;
        Policy::parse(&text).map_err(|err| StoreError::Corrupt(err.to_string()))
    }

    /// The active policy.
    pub async fn active(&self) -> Result<Policy, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S("POLICY".into()))
            .key("sk", AttributeValue::S("ACTIVE".into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| backend("GetItem", err))?;
        let version = item
            .item
            .and_then(|item| item.get("version").and_then(|v| v.as_s().ok()).cloned())
            .ok_or_else(|| {
                StoreError::Corrupt(
                    "the config table has no active policy; store one and activate it".into(),
                )
            })?;
        self.policy(&version).await
    }
}

#[async_trait]
impl PolicySource for DynamoPolicyStore {
    async fn active(&self) -> Result<Policy, StoreError> {
        DynamoPolicyStore::active(self).await
    }

    async fn version(&self, version: &str) -> Result<Policy, StoreError> {
        self.policy(version).await
    }
}
