//! The DynamoDB tables as `template.yaml` defines them, created through the API for tests
//! and emulators. Keep the two in step: the key schemas and indexes here are what the
//! adapters query.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;

fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, String> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|err| err.to_string())
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|err| err.to_string())
}

fn index(name: &str, hash: &str, range: Option<&str>) -> Result<GlobalSecondaryIndex, String> {
    let mut builder = GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        );
    if let Some(range) = range {
        builder = builder.key_schema(key(range, KeyType::Range)?);
    }
    builder.build().map_err(|err| err.to_string())
}

/// The runs single table: `pk`/`sk`, indexes `by_status` (status_key, due_at) and
/// `by_person` (person).
pub async fn create_runs_table(client: &Client, name: &str) -> Result<(), String> {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("sk", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("status_key", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("due_at", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("person", ScalarAttributeType::S)?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .global_secondary_indexes(index("by_status", "status_key", Some("due_at"))?)
        .global_secondary_indexes(index("by_person", "person", None)?)
        .send()
        .await
        .map(|_| ())
        .map_err(|err| format!("creating table {name}: {err:?}"))
}

/// The audit table: `run_id`/`seq`, index `by_subject` (subject, at).
pub async fn create_audit_table(client: &Client, name: &str) -> Result<(), String> {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("run_id", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("seq", ScalarAttributeType::N)?)
        .attribute_definitions(attribute("subject", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("at", ScalarAttributeType::S)?)
        .key_schema(key("run_id", KeyType::Hash)?)
        .key_schema(key("seq", KeyType::Range)?)
        .global_secondary_indexes(index("by_subject", "subject", Some("at"))?)
        .send()
        .await
        .map(|_| ())
        .map_err(|err| format!("creating table {name}: {err:?}"))
}

/// The config table: `pk`/`sk` (versioned policies).
pub async fn create_config_table(client: &Client, name: &str) -> Result<(), String> {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("sk", ScalarAttributeType::S)?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .send()
        .await
        .map(|_| ())
        .map_err(|err| format!("creating table {name}: {err:?}"))
}
