//! Slack (Enterprise Grid) connector: Slack's SCIM 2.0 API for accounts, composed from the
//! SCIM connector, and the Admin Web API for sessions.
//!
//! - discover / disable: the [`ScimConnector`] on `https://api.slack.com/scim/v2`
//!   (`PATCH /Users/{id}` with `active: false` deactivates the user;
//!   <https://docs.slack.dev/reference/scim-api>);
//! - sessions: `POST https://slack.com/api/admin.users.session.reset` with `user_id`
//!   (<https://docs.slack.dev/reference/methods/admin.users.session.reset>), read back with
//!   `admin.users.session.list` (<https://docs.slack.dev/reference/methods/admin.users.session.list>):
//!   the user has no active session left.
//!
//! The Web API answers HTTP 200 with `{"ok": false, "error": "…"}` for most failures and
//! HTTP 429 with `Retry-After` when rate limited
//! (<https://docs.slack.dev/apis/web-api/rate-limits>).
//!
//! Policy settings (`[systems.<name>]`, `kind = "slack"`): `secret` (an org admin's user
//! token with `admin` (SCIM) and `admin.users:read` / `admin.users:write` scopes in field
//! `token_field`), and `connection` keys `base_url` (serves both APIs, for tests),
//! `scim_url` ("https://api.slack.com/scim/v2"), `api_url` ("https://slack.com/api"),
//! `team_id` (the workspace to list sessions in; every session of the org is scanned
//! without it), `page_size` (100), `timeout_secs` (30), `token_field` ("token").

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::{Account, Applied, Connector, ConnectorError, Evidence, PersonQuery};
use reqwest::header::ACCEPT;
use reqwest::Url;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::http::{self, Raw, TokenCache};
use crate::scim::ScimConnector;

const KEYS: &[&str] = &[
    "api_url",
    "base_url",
    "page_size",
    "scim_url",
    "team_id",
    "timeout_secs",
    "token_field",
];
const SCIM_URL: &str = "https://api.slack.com/scim/v2";
const API_URL: &str = "https://slack.com/api";
const TOKEN_TTL: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
struct Settings {
    scim_url: Url,
    api_url: Url,
    team_id: Option<String>,
    page_size: u64,
    timeout_secs: u64,
    token_field: String,
    secret: String,
}

impl Settings {
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut s = http::Settings::new(system, "slack", config, KEYS);
        let base = match config.connection.contains_key("base_url") {
            true => s.url("base_url", None, "http://127.0.0.1:8080"),
            false => None,
        };
        let under = |base: &Url, path: &str| http::join(base, &path.split('/').collect::<Vec<_>>());
        let scim_url = match &base {
            Some(base) if !config.connection.contains_key("scim_url") => {
                Some(under(base, "scim/v2"))
            }
            _ => s.url("scim_url", Some(SCIM_URL), SCIM_URL),
        };
        let api_url = match &base {
            Some(base) if !config.connection.contains_key("api_url") => Some(under(base, "api")),
            _ => s.url("api_url", Some(API_URL), API_URL),
        };
        let team_id = match config.connection.get("team_id") {
            None => None,
            Some(_) => s.text("team_id", None, "a workspace id such as \"T0123ABCD\""),
        };
        let page_size = s.number("page_size", 100, 1000);
        let timeout_secs = s.number("timeout_secs", 30, 600);
        let token_field = s
            .text(
                "token_field",
                Some("token"),
                "the name of the secret's field holding the Slack admin token (default \"token\")",
            )
            .unwrap_or_else(|| "token".into());
        let secret = s.secret(&format!(
            "field \"{token_field}\" holds an org admin's token with the admin, admin.users:read and admin.users:write scopes"
        ));
        match (scim_url, api_url, secret) {
            (Some(scim_url), Some(api_url), Some(secret)) if s.problems.is_empty() => {
                Ok(Settings {
                    scim_url,
                    api_url,
                    team_id,
                    page_size,
                    timeout_secs,
                    token_field,
                    secret,
                })
            }
            _ => Err(s.problems),
        }
    }

    /// The SCIM connector's system entry for the same secret.
    fn scim_config(&self, config: &SystemConfig) -> Result<SystemConfig, ConnectorError> {
        let mut scim = config.clone();
        scim.kind = "scim".into();
        scim.connection = serde_json::from_value(json!({
            "base_url": self.scim_url.as_str(),
            "page_size": self.page_size,
            "timeout_secs": self.timeout_secs,
            "token_field": self.token_field,
        }))
        .map_err(|err| ConnectorError::InvalidConfig(err.to_string()))?;
        Ok(scim)
    }
}

pub struct SlackConnector {
    system: String,
    settings: Settings,
    scim: ScimConnector,
    client: reqwest::Client,
    secrets: Arc<dyn SecretSource>,
    token: TokenCache,
}

impl std::fmt::Debug for SlackConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConnector")
            .field("system", &self.system)
            .field("api_url", &self.settings.api_url.as_str())
            .field("scim", &self.scim)
            .finish_non_exhaustive()
    }
}

impl SlackConnector {
    pub fn from_config(
        system: &str,
        config: &SystemConfig,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Self, ConnectorError> {
        let settings = Settings::parse(system, config)
            .map_err(|problems| ConnectorError::InvalidConfig(problems.join("; ")))?;
        let scim =
            ScimConnector::from_config(system, &settings.scim_config(config)?, secrets.clone())?;
        let client = http::client(
            system,
            Duration::from_secs(settings.timeout_secs),
            usize::try_from(config.concurrency.max(1)).unwrap_or(1),
        )?;
        Ok(SlackConnector {
            system: system.to_string(),
            settings,
            scim,
            client,
            secrets,
            token: TokenCache::default(),
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    async fn admin_token(&self) -> Result<String, ConnectorError> {
        self.token
            .get(|| async {
                let what = "its Slack admin token";
                let secret = self
                    .secrets
                    .secret(&self.settings.secret)
                    .await
                    .map_err(|err| http::secret_error(&self.system, what, &err))?;
                let value = secret
                    .field(&self.settings.token_field)
                    .map_err(|err| http::secret_error(&self.system, what, &err))?
                    .trim()
                    .to_string();
                if value.is_empty() {
                    return Err(ConnectorError::InvalidConfig(format!(
                        "system \"{}\": field \"{}\" of secret \"{}\" is empty",
                        self.system, self.settings.token_field, self.settings.secret
                    )));
                }
                Ok((value, TOKEN_TTL))
            })
            .await
    }

    /// Calls a Web API method (`POST {api_url}/{method}`, form-encoded, bearer token) and
    /// maps `ok: false` errors. `pass` lists error codes the caller handles itself.
    async fn web(
        &self,
        method: &str,
        form: &[(&str, &str)],
        pass: &[&str],
    ) -> Result<Value, ConnectorError> {
        let token = self.admin_token().await?;
        let request = format!("POST /api/{method}");
        let builder = self
            .client
            .post(http::join(&self.settings.api_url, &[method]))
            .bearer_auth(&token)
            .header(ACCEPT, "application/json")
            .form(form);
        tracing::debug!(system = %self.system, %request, "slack request");
        let raw: Raw = http::exchange(builder, &self.system, &request, |status| status == 200)
            .await
            .map_err(|err| http::redact(err, &token))?;
        let (system, secret, field) = (
            &self.system,
            &self.settings.secret,
            &self.settings.token_field,
        );
        let delay = http::retry_delay(&raw.headers, None, Utc::now());
        if raw.status != 200 {
            let err = http::status_kind(
                raw.status,
                delay,
                format!(
                    "system \"{system}\": {request} answered HTTP {}",
                    raw.status
                ),
            );
            return Err(http::redact(err, &token));
        }
        if raw.body["ok"].as_bool() == Some(true) {
            return Ok(raw.body);
        }
        let code = raw.body["error"].as_str().unwrap_or("unknown_error");
        if pass.contains(&code) {
            return Ok(raw.body);
        }
        let answered = format!("system \"{system}\": {request} answered ok: false, error: {code}");
        // https://docs.slack.dev/reference/methods/admin.users.session.reset#errors
        let err = match code {
            "ratelimited" => ConnectorError::Throttled {
                retry_after: delay,
                message: answered,
            },
            "not_authed" | "invalid_auth" | "token_revoked" | "token_expired"
            | "account_inactive" => ConnectorError::Unauthorized(format!(
                "Slack refused the admin token of system \"{system}\" from secret \"{secret}\" field \"{field}\" ({code}); rotate that secret"
            )),
            "missing_scope" | "not_allowed_token_type" | "not_an_admin"
            | "not_an_enterprise" | "feature_not_enabled" | "no_permission" => {
                ConnectorError::Unauthorized(format!(
                    "Slack refused {request} to the token of system \"{system}\" from secret \"{secret}\" field \"{field}\" ({code}{}); it must be an Enterprise Grid org admin's user token with the admin.users:read and admin.users:write scopes",
                    raw.body["needed"].as_str().map(|n| format!(", needed: {n}")).unwrap_or_default()
                ))
            }
            "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
                ConnectorError::Transient(answered)
            }
            _ => ConnectorError::Permanent(answered),
        };
        Err(http::redact(err, &token))
    }

    /// The user's active sessions (`admin.users.session.list`, every page); `None` when
    /// Slack does not know the user.
    async fn sessions(&self, user_id: &str) -> Result<Option<Vec<Value>>, ConnectorError> {
        let limit = self.settings.page_size.to_string();
        let mut cursor = String::new();
        let mut found = Vec::new();
        for _ in 0..http::MAX_PAGES {
            let mut form = vec![("limit", limit.as_str())];
            if let Some(team) = &self.settings.team_id {
                form.push(("user_id", user_id));
                form.push(("team_id", team.as_str()));
            }
            if !cursor.is_empty() {
                form.push(("cursor", cursor.as_str()));
            }
            let body = self
                .web("admin.users.session.list", &form, &["user_not_found"])
                .await?;
            if body["error"].as_str() == Some("user_not_found") {
                return Ok(None);
            }
            found.extend(
                body["active_sessions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["user_id"].as_str() == Some(user_id))
                    .cloned(),
            );
            cursor = body["response_metadata"]["next_cursor"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if cursor.is_empty() {
                return Ok(Some(found));
            }
        }
        Err(ConnectorError::Permanent(format!(
            "system \"{}\": admin.users.session.list did not end after {} pages",
            self.system,
            http::MAX_PAGES
        )))
    }

    async fn reset_sessions(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        match self.sessions(user_id).await? {
            None => return Ok(Applied::AlreadyDone),
            Some(sessions) if sessions.is_empty() => return Ok(Applied::AlreadyDone),
            Some(_) => {}
        }
        let body = self
            .web(
                "admin.users.session.reset",
                &[("user_id", user_id)],
                &["user_not_found"],
            )
            .await?;
        Ok(if body["ok"].as_bool() == Some(true) {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }
}

const SUPPORTS: &[StageKind] = &[StageKind::Sessions, StageKind::Disable];

#[async_trait]
impl Connector for SlackConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        self.scim.discover(person).await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        match task.action {
            Action::RevokeSessions => {
                let span = tracing::debug_span!("slack.apply", system = %self.system, task_id = %task.task_id);
                self.reset_sessions(&task.account.id).instrument(span).await
            }
            Action::Disable => self.scim.apply(task).await,
            other => Err(ConnectorError::Unsupported(format!(
                "{} (the Slack connector revokes sessions and deactivates users)",
                other.as_str().replace('_', " ")
            ))),
        }
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        match task.action {
            Action::RevokeSessions => {
                let span = tracing::debug_span!("slack.verify", system = %self.system, task_id = %task.task_id);
                async {
                    let sessions = self.sessions(&task.account.id).await?;
                    Ok(Evidence {
                        verified: sessions.as_ref().is_none_or(Vec::is_empty),
                        observed: json!({
                            "request": "POST /api/admin.users.session.list",
                            "user_found": sessions.is_some(),
                            "active_sessions": sessions.map(|s| s.len()).unwrap_or(0),
                        }),
                    })
                }
                .instrument(span)
                .await
            }
            Action::Disable => self.scim.verify(task).await,
            other => Err(ConnectorError::Unsupported(format!(
                "verify {} (the Slack connector revokes sessions and deactivates users)",
                other.as_str().replace('_', " ")
            ))),
        }
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        self.scim.list_accounts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_slack_hosts_and_base_url_serves_both() {
        let config: SystemConfig =
            serde_json::from_value(json!({"kind": "slack", "secret": "s", "connection": {}}))
                .unwrap_or_else(|err| panic!("{err}"));
        let settings = Settings::parse("chat", &config).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(settings.scim_url.as_str(), "https://api.slack.com/scim/v2");
        assert_eq!(settings.api_url.as_str(), "https://slack.com/api");
        let config: SystemConfig = serde_json::from_value(json!({
            "kind": "slack", "secret": "s", "connection": {"base_url": "http://127.0.0.1:9"},
        }))
        .unwrap_or_else(|err| panic!("{err}"));
        let settings = Settings::parse("chat", &config).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(settings.scim_url.as_str(), "http://127.0.0.1:9/scim/v2");
        assert_eq!(settings.api_url.as_str(), "http://127.0.0.1:9/api");
        let config: SystemConfig =
            serde_json::from_value(json!({"kind": "slack", "connection": {"teams": 1}}))
                .unwrap_or_else(|err| panic!("{err}"));
        let all = SlackConnector::check_config("chat", &config).join("\n");
        assert!(
            all.contains("connection.teams is not a slack setting"),
            "{all}"
        );
        assert!(all.contains("systems.chat.secret is required"), "{all}");
    }
}
