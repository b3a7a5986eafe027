//! Loading the SDK configuration once per process, with an optional endpoint override
//! (`DEPROV_AWS_ENDPOINT_URL`, e.g. an emulator on 127.0.0.1).

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Where the adapters talk to.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    /// Overrides every service endpoint (tests, emulators). `None` uses AWS.
    pub endpoint_url: Option<String>,
    /// Overrides the region from the environment.
    pub region: Option<String>,
}

impl AwsSettings {
    /// From `DEPROV_AWS_ENDPOINT_URL` and `AWS_REGION` (both optional).
    pub fn from_env() -> AwsSettings {
        AwsSettings {
            endpoint_url: std::env::var("DEPROV_AWS_ENDPOINT_URL")
                .ok()
                .filter(|v| !v.is_empty()),
            region: std::env::var("AWS_REGION").ok().filter(|v| !v.is_empty()),
        }
    }
}

/// The shared SDK configuration: credentials and region from the usual chain.
pub async fn load_sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    loader.load().await
}
