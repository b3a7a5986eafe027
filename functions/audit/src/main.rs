//! The audit function: RecordPlan, RecordDeferral, RecordStage and Finalize.

mod handler;

use deprov_aws::lambda::{init_tracing, required_env};
use deprov_aws::{load_sdk_config, AwsSettings, DynamoAuditLog, DynamoRunStore};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let runs_table = required_env("DEPROV_RUNS_TABLE")?;
    let audit_table = required_env("DEPROV_AUDIT_TABLE")?;
    let sdk = load_sdk_config(&AwsSettings::from_env()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let deps = handler::Deps {
        store: DynamoRunStore::new(dynamodb.clone(), runs_table.clone()),
        audit: DynamoAuditLog::new(dynamodb, audit_table, runs_table),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        handler::handle(&deps, event)
    }))
    .await
}
