//! Okta connector (Okta Management API v1, SSWS API token).
//!
//! Accounts are Okta users, entitlements the Okta-mastered groups they are members of
//! (`OKTA_GROUP`; the `BUILT_IN` group "Everyone" is skipped; `APP_GROUP`s are listed as
//! kind `app_group` and refused on removal: their source directory owns them).
//! - sessions: `DELETE /api/v1/users/{id}/sessions?oauthTokens=true`;
//! - disable: `POST /api/v1/users/{id}/lifecycle/suspend` (or `/deactivate`);
//! - remove entitlement: `DELETE /api/v1/groups/{gid}/users/{uid}`;
//! - delete: deactivate when needed, then `DELETE /api/v1/users/{id}`.
//!
//! Okta has no API that lists a user's sessions, so a revocation cannot be read back: the
//! evidence is the 204 of the revocation this connector made, the user re-read (no sign-in
//! since, per `lastLogin`), and says so. A user whose status is SUSPENDED or DEPROVISIONED
//! cannot start new sessions.
//!
//! Policy settings (`[systems.<name>]`, `kind = "okta"`): `secret` (the API token is its
//! field `token_field`), and `connection` keys `base_url` (required, `https://<org>.okta.com`),
//! `disable` ("suspend" or "deactivate"), `page_size` (200), `timeout_secs` (30),
//! `token_field` ("token").
//!
//! Rate limits: 429 with `X-Rate-Limit-Reset` (UTC epoch seconds) is `Throttled` until then
//! (a `Retry-After` wins when present).
//! <https://developer.okta.com/docs/reference/rl-best-practices/>

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::{MatchBy, SystemConfig};
use deprov_core::ports::SecretSource;
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Entitlement, Evidence, PersonQuery,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::http::{self, describe, Raw, TokenCache};

const KEYS: &[&str] = &[
    "base_url",
    "disable",
    "page_size",
    "timeout_secs",
    "token_field",
];
const BASE_URL_EXAMPLE: &str = "https://example.okta.com";
/// Okta's maximum `limit` of `GET /api/v1/users`.
const MAX_PAGE_SIZE: u64 = 200;
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// <https://developer.okta.com/docs/reference/rl-best-practices/>
const RESET_HEADER: &str = "x-rate-limit-reset";
const SESSIONS_NOTE: &str = "Okta has no API that lists a user's sessions: the proof is the 204 of DELETE /api/v1/users/{id}/sessions made by this connector and no sign-in (lastLogin) since; a status of SUSPENDED or DEPROVISIONED blocks new sessions";

/// Statuses in which the user cannot sign in.
fn is_blocked(status: &str) -> bool {
    matches!(status, "SUSPENDED" | "DEPROVISIONED")
}

#[derive(Clone, Debug)]
struct Settings {
    base_url: Url,
    deactivate: bool,
    page_size: u64,
    timeout: Duration,
    token_field: String,
    secret: String,
}

impl Settings {
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut s = http::Settings::new(system, "okta", config, KEYS);
        let base_url = s.url("base_url", None, BASE_URL_EXAMPLE);
        let deactivate = s.choice("disable", &["suspend", "deactivate"]) == "deactivate";
        let page_size = s.number("page_size", MAX_PAGE_SIZE, MAX_PAGE_SIZE);
        let timeout = s.number("timeout_secs", 30, 600);
        let token_field = s
            .text(
                "token_field",
                Some("token"),
                "the name of the secret's field holding the Okta API token (default \"token\")",
            )
            .unwrap_or_else(|| "token".into());
        let secret = s.secret(&format!("field \"{token_field}\" holds the Okta API token"));
        match (base_url, secret) {
            (Some(base_url), Some(secret)) if s.problems.is_empty() => Ok(Settings {
                base_url,
                deactivate,
                page_size,
                timeout: Duration::from_secs(timeout),
                token_field,
                secret,
            }),
            _ => Err(s.problems),
        }
    }
}

/// A revocation this connector made: Okta cannot show it afterwards.
#[derive(Clone, Debug)]
struct Revocation {
    at: DateTime<Utc>,
    status: u16,
}

pub struct OktaConnector {
    system: String,
    settings: Settings,
    match_by: MatchBy,
    client: reqwest::Client,
    secrets: Arc<dyn SecretSource>,
    token: TokenCache,
    revoked: std::sync::Mutex<BTreeMap<String, Revocation>>,
}

impl std::fmt::Debug for OktaConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OktaConnector")
            .field("system", &self.system)
            .field("base_url", &self.settings.base_url.as_str())
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

/// An Okta search literal: a double-quoted string with `"` and `\` escaped.
fn quote(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{}\"", value.replace('"', "")))
}

/// `profile.login eq "…" or profile.email eq "…"`
/// (<https://developer.okta.com/docs/api/openapi/okta-management/management/tag/User/#tag/User/operation/listUsers>).
fn person_search(person: &PersonQuery, match_by: MatchBy) -> String {
    let mut clauses = Vec::new();
    if let (MatchBy::Username, Some(username)) = (match_by, person.username.as_deref()) {
        if !username.is_empty() {
            clauses.push(format!("profile.login eq {}", quote(username)));
        }
    }
    for clause in [
        format!("profile.login eq {}", quote(&person.email)),
        format!("profile.email eq {}", quote(&person.email)),
    ] {
        if !clauses.contains(&clause) {
            clauses.push(clause);
        }
    }
    clauses.join(" or ")
}

fn okta_error(body: &Value) -> String {
    match body {
        Value::String(text) => format!(" ({text})"),
        _ => match (body["errorCode"].as_str(), body["errorSummary"].as_str()) {
            (Some(code), Some(summary)) => format!(" ({code}: {})", http::snippet(summary)),
            (None, Some(summary)) => format!(" ({})", http::snippet(summary)),
            _ => String::new(),
        },
    }
}

fn group_entitlement(group: &Value) -> Option<Entitlement> {
    let id = group["id"].as_str()?;
    let kind = match group["type"].as_str() {
        Some("BUILT_IN") => return None,
        Some("APP_GROUP") => "app_group",
        _ => "group",
    };
    Some(Entitlement {
        id: id.to_string(),
        name: group["profile"]["name"].as_str().unwrap_or(id).to_string(),
        kind: kind.into(),
    })
}

fn last_login(user: &Value) -> Option<DateTime<Utc>> {
    user["lastLogin"]
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
}

impl OktaConnector {
    pub fn from_config(
        system: &str,
        config: &SystemConfig,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Self, ConnectorError> {
        let settings = Settings::parse(system, config)
            .map_err(|problems| ConnectorError::InvalidConfig(problems.join("; ")))?;
        let client = http::client(
            system,
            settings.timeout,
            usize::try_from(config.concurrency.max(1)).unwrap_or(1),
        )?;
        Ok(OktaConnector {
            system: system.to_string(),
            settings,
            match_by: config.match_by,
            client,
            secrets,
            token: TokenCache::default(),
            revoked: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    async fn api_token(&self) -> Result<String, ConnectorError> {
        self.token
            .get(|| async {
                let what = "its Okta API token";
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
                        "system \"{}\": field \"{}\" of secret \"{}\" is empty; store the Okta API token there",
                        self.system, self.settings.token_field, self.settings.secret
                    )));
                }
                Ok((value, TOKEN_TTL))
            })
            .await
    }

    fn url(&self, segments: &[&str]) -> Url {
        http::join(&self.settings.base_url, segments)
    }

    /// Sends one request; 2xx and `pass` come back, the rest is mapped onto errors.
    async fn send(
        &self,
        method: Method,
        url: Url,
        request: &str,
        body: Option<&Value>,
        pass: &[u16],
    ) -> Result<Raw, ConnectorError> {
        let token = self.api_token().await?;
        let mut builder = self
            .client
            .request(method, url)
            .header(AUTHORIZATION, format!("SSWS {token}"))
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        tracing::debug!(system = %self.system, %request, "okta request");
        let ok = |status: u16| (200..300).contains(&status) || pass.contains(&status);
        let raw = http::exchange(builder, &self.system, request, ok)
            .await
            .map_err(|err| http::redact(err, &token))?;
        if ok(raw.status) {
            return Ok(raw);
        }
        let (system, secret, field) = (
            &self.system,
            &self.settings.secret,
            &self.settings.token_field,
        );
        let detail = okta_error(&raw.body);
        let err = match raw.status {
            401 => {
                self.token.forget().await;
                ConnectorError::Unauthorized(format!(
                    "Okta refused the API token of system \"{system}\" from secret \"{secret}\" field \"{field}\" (HTTP 401{detail}); rotate that secret"
                ))
            }
            403 => ConnectorError::Unauthorized(format!(
                "Okta refused {request} to the API token of system \"{system}\" from secret \"{secret}\" field \"{field}\" (HTTP 403{detail}); the token's admin needs the right to manage users and groups"
            )),
            status => http::status_kind(
                status,
                http::retry_delay(&raw.headers, Some(RESET_HEADER), Utc::now()),
                format!("system \"{system}\": {request} answered HTTP {status}{detail}"),
            ),
        };
        Err(http::redact(err, &token))
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        pass: &[u16],
    ) -> Result<Raw, ConnectorError> {
        let request = describe(&method, segments);
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.send(method, url, &request, body, pass).await
    }

    /// Every item of a listing, following `Link: <…>; rel="next"`
    /// (<https://developer.okta.com/docs/api/#pagination>). `None` when the first page is 404.
    async fn list(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Option<Vec<Value>>, ConnectorError> {
        let request = describe(&Method::GET, segments);
        let limit = self.settings.page_size.to_string();
        let mut url = self.url(segments);
        url.query_pairs_mut()
            .extend_pairs(query)
            .append_pair("limit", &limit);
        http::link_pages(
            &self.system,
            &self.settings.base_url,
            url,
            &request,
            |url, pass| self.send(Method::GET, url, &request, None, pass),
        )
        .await
    }

    async fn user(&self, user_id: &str) -> Result<Option<Value>, ConnectorError> {
        let raw = self
            .call(
                Method::GET,
                &["api", "v1", "users", user_id],
                &[],
                None,
                &[404],
            )
            .await?;
        Ok((raw.status != 404).then_some(raw.body))
    }

    /// The user's groups (`GET /api/v1/users/{id}/groups`); `None` when the user is gone.
    /// <https://developer.okta.com/docs/api/openapi/okta-management/management/tag/User/#tag/User/operation/listUserGroups>
    async fn groups(&self, user_id: &str) -> Result<Option<Vec<Value>>, ConnectorError> {
        self.list(&["api", "v1", "users", user_id, "groups"], &[])
            .await
    }

    fn account(&self, user: &Value, mut entitlements: Vec<Entitlement>) -> Option<Account> {
        let id = user["id"].as_str()?;
        entitlements.sort();
        entitlements.dedup();
        let status = user["status"].as_str().unwrap_or("ACTIVE");
        Some(Account {
            system: self.system.clone(),
            id: id.to_string(),
            username: user["profile"]["login"].as_str().unwrap_or(id).to_string(),
            email: user["profile"]["email"].as_str().map(str::to_string),
            active: !is_blocked(status) && status != "STAGED",
            entitlements,
            credentials: Vec::new(),
            last_activity: last_login(user),
        })
    }

    fn target_group<'t>(&self, task: &'t Task) -> Result<&'t str, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} acts on an entitlement but names no target group",
                task.task_id
            ))
        })?;
        match target.kind.as_str() {
            "group" => Ok(&target.id),
            "app_group" => Err(ConnectorError::Unsupported(format!(
                "remove the user from \"{}\": it is an APP_GROUP, whose membership its source directory or app owns; remove it there",
                target.name
            ))),
            other => Err(ConnectorError::Unsupported(format!(
                "act on a \"{other}\" entitlement (Okta groups only)"
            ))),
        }
    }

    /// `DELETE /api/v1/users/{id}/sessions?oauthTokens=true`
    /// <https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserSessions/#tag/UserSessions/operation/revokeUserSessions>
    async fn revoke_sessions(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        let Some(user) = self.user(user_id).await? else {
            return Ok(Applied::AlreadyDone);
        };
        let known = self.revocation(user_id);
        if let Some(done) = known {
            if last_login(&user).is_none_or(|login| login <= done.at) {
                return Ok(Applied::AlreadyDone);
            }
        }
        let at = Utc::now();
        let raw = self
            .call(
                Method::DELETE,
                &["api", "v1", "users", user_id, "sessions"],
                &[("oauthTokens", "true")],
                None,
                &[404],
            )
            .await?;
        if raw.status == 404 {
            return Ok(Applied::AlreadyDone);
        }
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.insert(
                user_id.to_string(),
                Revocation {
                    at,
                    status: raw.status,
                },
            );
        }
        Ok(Applied::Changed)
    }

    fn revocation(&self, user_id: &str) -> Option<Revocation> {
        self.revoked
            .lock()
            .ok()
            .and_then(|revoked| revoked.get(user_id).cloned())
    }

    /// `POST /api/v1/users/{id}/lifecycle/suspend` (only from ACTIVE) or `…/deactivate`.
    /// <https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserLifecycle/>
    async fn disable(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        let Some(user) = self.user(user_id).await? else {
            return Ok(Applied::AlreadyDone);
        };
        let status = user["status"].as_str().unwrap_or("ACTIVE");
        if is_blocked(status) {
            return Ok(Applied::AlreadyDone);
        }
        let operation = if self.settings.deactivate {
            "deactivate"
        } else if status == "ACTIVE" {
            "suspend"
        } else {
            return Err(ConnectorError::Permanent(format!(
                "system \"{}\": Okta suspends only ACTIVE users and user {user_id} is {status}; set systems.{}.connection.disable = \"deactivate\" or deactivate it in Okta",
                self.system, self.system
            )));
        };
        self.lifecycle(user_id, operation).await
    }

    async fn lifecycle(&self, user_id: &str, operation: &str) -> Result<Applied, ConnectorError> {
        let query: &[(&str, &str)] = if operation == "deactivate" {
            &[("sendEmail", "false")]
        } else {
            &[]
        };
        let raw = self
            .call(
                Method::POST,
                &["api", "v1", "users", user_id, "lifecycle", operation],
                query,
                None,
                &[404],
            )
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    /// The restore of a rehire: `POST …/lifecycle/unsuspend` for a SUSPENDED user,
    /// `…/lifecycle/activate?sendEmail=false` for a DEPROVISIONED one (Okta answers with the
    /// user ACTIVE, or PROVISIONED until they set a password).
    /// <https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserLifecycle/>
    async fn enable(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        let Some(user) = self.user(user_id).await? else {
            return Err(ConnectorError::NotFound(format!(
                "system \"{}\": Okta user {user_id} no longer exists, so it cannot be enabled again",
                self.system
            )));
        };
        let operation = match user["status"].as_str().unwrap_or("ACTIVE") {
            "SUSPENDED" => "unsuspend",
            "DEPROVISIONED" => "activate",
            _ => return Ok(Applied::AlreadyDone),
        };
        let query: &[(&str, &str)] = if operation == "activate" {
            &[("sendEmail", "false")]
        } else {
            &[]
        };
        self.call(
            Method::POST,
            &["api", "v1", "users", user_id, "lifecycle", operation],
            query,
            None,
            &[],
        )
        .await?;
        Ok(Applied::Changed)
    }

    /// `PUT /api/v1/groups/{groupId}/users/{userId}`: the restore of a removed membership.
    /// <https://developer.okta.com/docs/api/openapi/okta-management/management/tag/Group/#tag/Group/operation/assignUserToGroup>
    async fn add_member(&self, group_id: &str, user_id: &str) -> Result<Applied, ConnectorError> {
        let groups = self.groups(user_id).await?.ok_or_else(|| {
            ConnectorError::NotFound(format!(
                "system \"{}\": Okta user {user_id} no longer exists, so it cannot be added to group {group_id} again",
                self.system
            ))
        })?;
        if groups.iter().any(|g| g["id"].as_str() == Some(group_id)) {
            return Ok(Applied::AlreadyDone);
        }
        self.call(
            Method::PUT,
            &["api", "v1", "groups", group_id, "users", user_id],
            &[],
            None,
            &[],
        )
        .await?;
        Ok(Applied::Changed)
    }

    /// `DELETE /api/v1/groups/{groupId}/users/{userId}`
    /// <https://developer.okta.com/docs/api/openapi/okta-management/management/tag/Group/#tag/Group/operation/unassignUserFromGroup>
    async fn remove_member(
        &self,
        group_id: &str,
        user_id: &str,
    ) -> Result<Applied, ConnectorError> {
        let Some(groups) = self.groups(user_id).await? else {
            return Ok(Applied::AlreadyDone);
        };
        if !groups.iter().any(|g| g["id"].as_str() == Some(group_id)) {
            return Ok(Applied::AlreadyDone);
        }
        let raw = self
            .call(
                Method::DELETE,
                &["api", "v1", "groups", group_id, "users", user_id],
                &[],
                None,
                &[404],
            )
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    /// Deactivates when needed, then `DELETE /api/v1/users/{id}` (Okta deletes only
    /// DEPROVISIONED users).
    /// <https://developer.okta.com/docs/api/openapi/okta-management/management/tag/User/#tag/User/operation/deleteUser>
    async fn delete(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        let Some(user) = self.user(user_id).await? else {
            return Ok(Applied::AlreadyDone);
        };
        if user["status"].as_str() != Some("DEPROVISIONED")
            && self.lifecycle(user_id, "deactivate").await? == Applied::AlreadyDone
        {
            return Ok(Applied::AlreadyDone);
        }
        let raw = self
            .call(
                Method::DELETE,
                &["api", "v1", "users", user_id],
                &[("sendEmail", "false")],
                None,
                &[404],
            )
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    async fn evidence(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let user_id = task.account.id.as_str();
        let user_request = describe(&Method::GET, &["api", "v1", "users", user_id]);
        match task.action {
            Action::RevokeSessions => {
                let user = self.user(user_id).await?;
                let revocation = self.revocation(user_id);
                let Some(user) = user else {
                    return Ok(Evidence {
                        verified: true,
                        observed: json!({"request": user_request, "status": 404, "note": "the user no longer exists"}),
                    });
                };
                let status = user["status"].as_str().unwrap_or("ACTIVE").to_string();
                let login = last_login(&user);
                let verified = is_blocked(&status)
                    || revocation
                        .as_ref()
                        .is_some_and(|done| login.is_none_or(|login| login <= done.at));
                Ok(Evidence {
                    verified,
                    observed: json!({
                        "revocation": revocation.map(|done| json!({
                            "request": format!("DELETE /api/v1/users/{user_id}/sessions?oauthTokens=true"),
                            "status": done.status,
                            "at": done.at.to_rfc3339(),
                        })),
                        "request": user_request,
                        "user_status": status,
                        "lastLogin": user["lastLogin"],
                        "note": SESSIONS_NOTE,
                    }),
                })
            }
            Action::Disable | Action::Delete | Action::Enable => {
                let user = self.user(user_id).await?;
                let (verified, seen) = match &user {
                    None => (
                        task.action != Action::Enable,
                        json!({"request": user_request, "status": 404}),
                    ),
                    Some(user) => {
                        let status = user["status"].as_str().unwrap_or("ACTIVE");
                        let verified = match task.action {
                            Action::Disable => is_blocked(status),
                            Action::Enable => !is_blocked(status),
                            _ => false,
                        };
                        (
                            verified,
                            json!({"request": user_request, "status": 200, "user_status": status}),
                        )
                    }
                };
                Ok(Evidence {
                    verified,
                    observed: seen,
                })
            }
            Action::RemoveEntitlement | Action::RestoreEntitlement => {
                let group_id = self.target_group(task)?;
                let request = describe(&Method::GET, &["api", "v1", "users", user_id, "groups"]);
                let groups = self.groups(user_id).await?;
                let member = groups.as_ref().is_some_and(|groups| {
                    groups.iter().any(|g| g["id"].as_str() == Some(group_id))
                });
                Ok(Evidence {
                    verified: member == (task.action == Action::RestoreEntitlement),
                    observed: json!({
                        "request": request,
                        "status": if groups.is_some() { 200 } else { 404 },
                        "group": group_id,
                        "member": member,
                    }),
                })
            }
            other => Err(ConnectorError::Unsupported(format!(
                "verify {} (the Okta connector has no such operation)",
                other.as_str().replace('_', " ")
            ))),
        }
    }
}

const SUPPORTS: &[StageKind] = &[
    StageKind::Sessions,
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Delete,
    StageKind::Restore,
];

#[async_trait]
impl Connector for OktaConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("okta.discover", system = %self.system, person_id = %person.person_id);
        async {
            let search = person_search(person, self.match_by);
            let users = self
                .list(&["api", "v1", "users"], &[("search", &search)])
                .await?
                .unwrap_or_default();
            let mut accounts: Vec<Account> = Vec::new();
            for user in users {
                let Some(id) = user["id"].as_str() else {
                    continue;
                };
                if accounts.iter().any(|a| a.id == id) {
                    continue;
                }
                let groups = self.groups(id).await?.unwrap_or_default();
                let entitlements = groups.iter().filter_map(group_entitlement).collect();
                accounts.extend(self.account(&user, entitlements));
            }
            Ok(accounts)
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("okta.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let user_id = task.account.id.as_str();
            let applied = match task.action {
                Action::RevokeSessions => self.revoke_sessions(user_id).await,
                Action::Disable => self.disable(user_id).await,
                Action::RemoveEntitlement => {
                    let group_id = self.target_group(task)?;
                    self.remove_member(group_id, user_id).await
                }
                Action::Delete => self.delete(user_id).await,
                Action::Enable => self.enable(user_id).await,
                Action::RestoreEntitlement => {
                    let group_id = self.target_group(task)?;
                    self.add_member(group_id, user_id).await
                }
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (the Okta connector has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "okta apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("okta.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        self.evidence(task).instrument(span).await
    }

    /// `GET /api/v1/users` (every status but DEPROVISIONED) with `lastLogin`.
    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let users = self
            .list(&["api", "v1", "users"], &[])
            .await?
            .unwrap_or_default();
        Ok(users
            .iter()
            .filter_map(|user| self.account(user, Vec::new()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(connection: Value, secret: Option<&str>) -> SystemConfig {
        crate::test_config("okta", connection, secret)
    }

    #[test]
    fn settings_are_checked() {
        let ok = config(json!({"base_url": "https://acme.okta.com"}), Some("s"));
        assert!(OktaConnector::check_config("idp", &ok).is_empty());
        let settings = Settings::parse("idp", &ok).unwrap_or_else(|p| panic!("{p:?}"));
        assert!(!settings.deactivate);
        assert_eq!(settings.page_size, 200);
        let problems = OktaConnector::check_config(
            "idp",
            &config(json!({"disable": "lock", "org": "x"}), None),
        );
        let all = problems.join("\n");
        for needle in [
            "systems.idp.connection.org is not a okta setting",
            "systems.idp.connection.base_url is required",
            "systems.idp.connection.disable = \"lock\" must be one of \"suspend\", \"deactivate\"",
            "systems.idp.secret is required",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
    }

    #[test]
    fn search_is_quoted() {
        let person = PersonQuery {
            person_id: "1".into(),
            email: "a\"b@example.com".into(),
            username: Some("ada".into()),
        };
        assert_eq!(
            person_search(&person, MatchBy::Username),
            r#"profile.login eq "ada" or profile.login eq "a\"b@example.com" or profile.email eq "a\"b@example.com""#
        );
    }

    #[test]
    fn groups_map_to_entitlements() {
        assert_eq!(
            group_entitlement(
                &json!({"id": "00g1", "type": "BUILT_IN", "profile": {"name": "Everyone"}})
            ),
            None
        );
        let group = group_entitlement(
            &json!({"id": "00g2", "type": "OKTA_GROUP", "profile": {"name": "eng"}}),
        );
        assert_eq!(
            group.map(|g| (g.name, g.kind)),
            Some(("eng".into(), "group".into()))
        );
        let app = group_entitlement(
            &json!({"id": "00g3", "type": "APP_GROUP", "profile": {"name": "ad"}}),
        );
        assert_eq!(app.map(|g| g.kind), Some("app_group".into()));
    }
}
