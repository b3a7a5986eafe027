//! The plan function: BuildPlan of the state machine.

mod handler;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deprov_aws::lambda::{init_tracing, required_env};
use deprov_aws::{
    load_sdk_config, AwsSettings, ConfigError, DynamoPolicyStore, DynamoRunStore, Executions,
    SecretsManagerSource,
};
use deprov_core::ports::SecretSource;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let runs_table = required_env("DEPROV_RUNS_TABLE")?;
    let config_table = required_env("DEPROV_CONFIG_TABLE")?;
    let state_machine_arn = required_env("DEPROV_STATE_MACHINE_ARN")?;
    let queue_urls: BTreeMap<String, String> =
        serde_json::from_str(&required_env("DEPROV_QUEUE_URLS")?).map_err(|err| {
            ConfigError(format!(
                "DEPROV_QUEUE_URLS must be a JSON object of connector kind → queue URL: {err}"
            ))
        })?;
    let sdk = load_sdk_config(&AwsSettings::from_env()).await;
    let secrets: Arc<dyn SecretSource> = Arc::new(SecretsManagerSource::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        Duration::from_secs(300),
    ));
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let deps = handler::Deps {
        store: DynamoRunStore::new(dynamodb.clone(), runs_table),
        policies: DynamoPolicyStore::new(dynamodb, config_table),
        stopper: Executions::new(aws_sdk_sfn::Client::new(&sdk), state_machine_arn),
        connectors: Box::new(move |system, config| {
            deprov_connectors::build(system, config, secrets.clone())
        }),
        queue_urls,
        discovery_timeout: Duration::from_secs(20),
    };
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        handler::handle(&deps, event)
    }))
    .await
}
