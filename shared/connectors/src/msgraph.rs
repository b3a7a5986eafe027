//! Microsoft Graph connector (Entra ID users, v1.0 API, OAuth 2.0 client credentials).
//!
//! Accounts are Entra ID users; entitlements are the groups they are a direct member of
//! (`memberOf`, groups only) and the licenses assigned to them directly (group-inherited
//! licenses go with the group).
//! - sessions: `POST /v1.0/users/{id}/revokeSignInSessions`;
//! - disable: `PATCH /v1.0/users/{id}` `{"accountEnabled": false}`;
//! - remove entitlement: `DELETE /v1.0/groups/{gid}/members/{uid}/$ref`, or
//!   `POST /v1.0/users/{id}/assignLicense` with `removeLicenses`;
//! - delete: `DELETE /v1.0/users/{id}` (Entra keeps it in deleted items for 30 days).
//!
//! The access token comes from `POST {token_url}` (client credentials, scope
//! `https://graph.microsoft.com/.default`), is cached until `expires_in` minus a margin, and
//! fetched again once when Graph answers 401.
//! <https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow>
//!
//! Policy settings (`[systems.<name>]`, `kind = "msgraph"`): `secret` (fields `client_id` and
//! `client_secret`), and `connection` keys `tenant` (required unless `token_url` is given),
//! `base_url` ("https://graph.microsoft.com"), `token_url`
//! ("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"), `scope`, `page_size`
//! (100), `timeout_secs` (30).
//!
//! Throttling: 429 or 503 with `Retry-After` is `Throttled`
//! (<https://learn.microsoft.com/en-us/graph/throttling>).

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
use reqwest::header::ACCEPT;
use reqwest::{Method, Url};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::http::{self, describe, Raw, TokenCache};

const KEYS: &[&str] = &[
    "base_url",
    "page_size",
    "scope",
    "tenant",
    "timeout_secs",
    "token_url",
];
const DEFAULT_BASE_URL: &str = "https://graph.microsoft.com";
const DEFAULT_SCOPE: &str = "https://graph.microsoft.com/.default";
const CLIENT_ID: &str = "client_id";
const CLIENT_SECRET: &str = "client_secret";
/// `$top` of `GET /users` is at most 999 (<https://learn.microsoft.com/en-us/graph/paging>).
const MAX_PAGE_SIZE: u64 = 999;
/// A token is dropped this long before Entra says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Allowed difference between this host's clock and Entra's when comparing
/// `signInSessionsValidFromDateTime` with the time of a revocation.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
const USER_SELECT: &str =
    "id,userPrincipalName,mail,accountEnabled,assignedLicenses,licenseAssignmentStates";

#[derive(Clone, Debug)]
struct Settings {
    base_url: Url,
    token_url: Url,
    scope: String,
    page_size: u64,
    timeout: Duration,
    secret: String,
}

impl Settings {
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut s = http::Settings::new(system, "msgraph", config, KEYS);
        let base_url = s.url("base_url", Some(DEFAULT_BASE_URL), DEFAULT_BASE_URL);
        let tenant = match config.connection.get("tenant") {
            None => None,
            Some(_) => s.text(
                "tenant",
                None,
                "the Entra tenant id or domain, e.g. \"contoso.onmicrosoft.com\"",
            ),
        };
        let token_url = match (config.connection.contains_key("token_url"), &tenant) {
            (true, _) => s.url(
                "token_url",
                None,
                "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
            ),
            (false, Some(tenant)) => {
                let text = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token");
                let url = http::check_base_url(&text).ok();
                if url.is_none() || tenant.contains('/') {
                    s.problems.push(format!(
                        "{} = \"{tenant}\" is not a tenant id or domain",
                        s.key("tenant")
                    ));
                }
                url
            }
            (false, None) => {
                s.problems.push(format!(
                    "{} is required: the Entra tenant id or domain whose token endpoint issues the app's tokens, e.g. \"contoso.onmicrosoft.com\" (or set {})",
                    s.key("tenant"),
                    s.key("token_url")
                ));
                None
            }
        };
        let scope = s
            .text(
                "scope",
                Some(DEFAULT_SCOPE),
                "the OAuth scope of the token (default \"https://graph.microsoft.com/.default\")",
            )
            .unwrap_or_else(|| DEFAULT_SCOPE.into());
        let page_size = s.number("page_size", 100, MAX_PAGE_SIZE);
        let timeout = s.number("timeout_secs", 30, 600);
        let secret = s.secret(&format!(
            "fields \"{CLIENT_ID}\" and \"{CLIENT_SECRET}\" hold the app registration's credentials"
        ));
        match (base_url, token_url, secret) {
            (Some(base_url), Some(token_url), Some(secret)) if s.problems.is_empty() => {
                Ok(Settings {
                    base_url,
                    token_url,
                    scope,
                    page_size,
                    timeout: Duration::from_secs(timeout),
                    secret,
                })
            }
            _ => Err(s.problems),
        }
    }
}

/// An OData string literal: single quotes, a quote doubled
/// (<https://learn.microsoft.com/en-us/graph/query-parameters#escaping-single-quotes>).
fn odata_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn person_filter(person: &PersonQuery, match_by: MatchBy) -> String {
    let mut clauses = Vec::new();
    if let (MatchBy::Username, Some(username)) = (match_by, person.username.as_deref()) {
        if !username.is_empty() {
            clauses.push(format!("userPrincipalName eq {}", odata_quote(username)));
        }
    }
    for clause in [
        format!("userPrincipalName eq {}", odata_quote(&person.email)),
        format!("mail eq {}", odata_quote(&person.email)),
    ] {
        if !clauses.contains(&clause) {
            clauses.push(clause);
        }
    }
    clauses.join(" or ")
}

fn graph_error(body: &Value) -> String {
    match body {
        Value::String(text) => format!(" ({text})"),
        _ => match (
            body["error"]["code"].as_str(),
            body["error"]["message"].as_str(),
        ) {
            (Some(code), Some(message)) => format!(" ({code}: {})", http::snippet(message)),
            (Some(code), None) => format!(" ({code})"),
            _ => String::new(),
        },
    }
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
}

/// A group from `memberOf`, or `None` for roles and administrative units.
fn group_entitlement(object: &Value) -> Option<Entitlement> {
    if object["@odata.type"].as_str() != Some("#microsoft.graph.group") {
        return None;
    }
    let id = object["id"].as_str()?;
    let dynamic = object["groupTypes"].as_array().is_some_and(|types| {
        types
            .iter()
            .any(|t| t.as_str() == Some("DynamicMembership"))
    });
    let kind = if dynamic {
        "dynamic_group"
    } else if object["onPremisesSyncEnabled"].as_bool() == Some(true) {
        "synced_group"
    } else {
        "group"
    };
    Some(Entitlement {
        id: id.to_string(),
        name: object["displayName"].as_str().unwrap_or(id).to_string(),
        kind: kind.into(),
    })
}

/// The licenses assigned to the user directly (not inherited from a group).
fn direct_licenses(user: &Value) -> Vec<Entitlement> {
    let skus: Vec<&str> = match user["licenseAssignmentStates"].as_array() {
        Some(states) => states
            .iter()
            .filter(|state| state["assignedByGroup"].is_null())
            .filter_map(|state| state["skuId"].as_str())
            .collect(),
        None => user["assignedLicenses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|license| license["skuId"].as_str())
            .collect(),
    };
    skus.into_iter()
        .map(|sku| Entitlement {
            id: sku.to_string(),
            name: sku.to_string(),
            kind: "license".into(),
        })
        .collect()
}

fn has_license(user: &Value, sku: &str) -> bool {
    user["assignedLicenses"]
        .as_array()
        .is_some_and(|licenses| licenses.iter().any(|l| l["skuId"].as_str() == Some(sku)))
}

pub struct GraphConnector {
    system: String,
    settings: Settings,
    match_by: MatchBy,
    client: reqwest::Client,
    secrets: Arc<dyn SecretSource>,
    token: TokenCache,
    /// Revocations this connector made: user id → when (this host's clock).
    revoked: std::sync::Mutex<BTreeMap<String, DateTime<Utc>>>,
}

impl std::fmt::Debug for GraphConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphConnector")
            .field("system", &self.system)
            .field("base_url", &self.settings.base_url.as_str())
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl GraphConnector {
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
        Ok(GraphConnector {
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

    /// The client credentials from the secret: (client id, client secret).
    async fn credentials(&self) -> Result<(String, String), ConnectorError> {
        let what = "its Microsoft Graph client credentials";
        let secret = self
            .secrets
            .secret(&self.settings.secret)
            .await
            .map_err(|err| http::secret_error(&self.system, what, &err))?;
        let mut values = Vec::new();
        for field in [CLIENT_ID, CLIENT_SECRET] {
            let value = secret
                .field(field)
                .map_err(|err| http::secret_error(&self.system, what, &err))?
                .trim()
                .to_string();
            if value.is_empty() {
                return Err(ConnectorError::InvalidConfig(format!(
                    "system \"{}\": field \"{field}\" of secret \"{}\" is empty",
                    self.system, self.settings.secret
                )));
            }
            values.push(value);
        }
        let client_secret = values.pop().unwrap_or_default();
        let client_id = values.pop().unwrap_or_default();
        Ok((client_id, client_secret))
    }

    /// `POST {token_url}` with `grant_type=client_credentials`.
    /// <https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#get-a-token>
    async fn fetch_token(&self) -> Result<(String, Duration), ConnectorError> {
        let (client_id, client_secret) = self.credentials().await?;
        let request = format!("POST {}", self.settings.token_url.path());
        let builder = self
            .client
            .post(self.settings.token_url.clone())
            .header(ACCEPT, "application/json")
            .form(&[
                ("client_id", client_id.as_str()),
                ("client_secret", client_secret.as_str()),
                ("scope", self.settings.scope.as_str()),
                ("grant_type", "client_credentials"),
            ]);
        let raw = http::exchange(builder, &self.system, &request, |status| status == 200)
            .await
            .map_err(|err| http::redact(err, &client_secret))?;
        if raw.status == 200 {
            let token = raw.body["access_token"].as_str().unwrap_or_default();
            if token.is_empty() {
                return Err(ConnectorError::Permanent(format!(
                    "system \"{}\": {request} answered without an access_token",
                    self.system
                )));
            }
            let lifetime = raw.body["expires_in"].as_u64().unwrap_or(3599);
            let ttl = Duration::from_secs(lifetime).saturating_sub(TOKEN_MARGIN);
            return Ok((token.to_string(), ttl.max(Duration::from_secs(1))));
        }
        let code = raw.body["error"].as_str().unwrap_or_default();
        let description = raw.body["error_description"]
            .as_str()
            .map(|d| http::snippet(d.lines().next().unwrap_or_default()))
            .unwrap_or_default();
        let err = match (raw.status, code) {
            (400 | 401, "invalid_client" | "unauthorized_client") => {
                ConnectorError::Unauthorized(format!(
                    "the Microsoft identity platform refused the client credentials of system \"{}\" from secret \"{}\" fields \"{CLIENT_ID}\" and \"{CLIENT_SECRET}\" (HTTP {}, {code}: {description}); rotate that secret",
                    self.system, self.settings.secret, raw.status
                ))
            }
            (400, "invalid_scope") => ConnectorError::InvalidConfig(format!(
                "system \"{}\": the token endpoint refused the scope \"{}\" ({description}); fix systems.{}.connection.scope",
                self.system, self.settings.scope, self.system
            )),
            (400, "invalid_request") if description.contains("AADSTS900023") || description.contains("AADSTS90002") => {
                ConnectorError::InvalidConfig(format!(
                    "system \"{}\": the token endpoint does not know the tenant ({description}); fix systems.{}.connection.tenant",
                    self.system, self.system
                ))
            }
            (status, _) => http::status_kind(
                status,
                http::retry_delay(&raw.headers, None, Utc::now()),
                format!(
                    "system \"{}\": {request} answered HTTP {status} ({code}: {description})",
                    self.system
                ),
            ),
        };
        Err(http::redact(err, &client_secret))
    }

    /// Sends one Graph request with the bearer token (fetched again once on a 401).
    async fn send(
        &self,
        method: Method,
        url: Url,
        request: &str,
        body: Option<&Value>,
        pass: &[u16],
    ) -> Result<Raw, ConnectorError> {
        http::send_with_token(
            &self.client,
            &self.token,
            || self.fetch_token(),
            &self.system,
            method,
            url,
            request,
            body,
            pass,
            |raw| self.refused(raw, request),
        )
        .await
    }

    /// Graph's refusal of a request, by status.
    fn refused(&self, raw: &Raw, request: &str) -> ConnectorError {
        let detail = graph_error(&raw.body);
        let (system, secret) = (&self.system, &self.settings.secret);
        match raw.status {
            401 => ConnectorError::Unauthorized(format!(
                "Microsoft Graph refused the access token of system \"{system}\" obtained with the client credentials from secret \"{secret}\" (HTTP 401{detail}); check that secret and the app registration"
            )),
            403 => ConnectorError::Unauthorized(format!(
                "Microsoft Graph refused {request} to the app of system \"{system}\" (credentials from secret \"{secret}\") (HTTP 403{detail}); grant it User.ReadWrite.All, GroupMember.ReadWrite.All and Directory.Read.All application permissions with admin consent"
            )),
            status => http::status_kind(
                status,
                http::retry_delay(&raw.headers, None, Utc::now()),
                format!("system \"{system}\": {request} answered HTTP {status}{detail}"),
            ),
        }
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        pass: &[u16],
    ) -> Result<Raw, ConnectorError> {
        let mut all = vec!["v1.0"];
        all.extend_from_slice(segments);
        let request = describe(&method, &all);
        let mut url = http::join(&self.settings.base_url, &all);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.send(method, url, &request, body, pass).await
    }

    /// Every item of a collection, following `@odata.nextLink`
    /// (<https://learn.microsoft.com/en-us/graph/paging>). `None` when the first page is 404.
    async fn list(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Option<Vec<Value>>, ConnectorError> {
        let mut all = vec!["v1.0"];
        all.extend_from_slice(segments);
        let request = describe(&Method::GET, &all);
        let top = self.settings.page_size.to_string();
        let mut url = http::join(&self.settings.base_url, &all);
        url.query_pairs_mut()
            .extend_pairs(query)
            .append_pair("$top", &top);
        let mut items = Vec::new();
        for page in 0..http::MAX_PAGES {
            let pass: &[u16] = if page == 0 { &[404] } else { &[] };
            let raw = self
                .send(Method::GET, url.clone(), &request, None, pass)
                .await?;
            if raw.status == 404 {
                return Ok(None);
            }
            match raw.body.get("value") {
                Some(Value::Array(values)) => items.extend(values.iter().cloned()),
                _ => {
                    return Err(ConnectorError::Permanent(format!(
                        "system \"{}\": {request} answered a collection without a value array",
                        self.system
                    )))
                }
            }
            let Some(next) = raw.body["@odata.nextLink"].as_str() else {
                return Ok(Some(items));
            };
            url = Url::parse(next)
                .ok()
                .filter(|next| http::same_origin(&self.settings.base_url, next))
                .ok_or_else(|| {
                    ConnectorError::Permanent(format!(
                        "system \"{}\": {request} links its next page to {next}, outside {}; refusing to send the token there",
                        self.system, self.settings.base_url
                    ))
                })?;
        }
        Err(ConnectorError::Permanent(format!(
            "system \"{}\": {request} did not end after {} pages",
            self.system,
            http::MAX_PAGES
        )))
    }

    /// `GET /v1.0/users/{id}?$select=…`; `None` when the user is gone.
    /// <https://learn.microsoft.com/en-us/graph/api/user-get>
    async fn user(&self, user_id: &str, select: &str) -> Result<Option<Value>, ConnectorError> {
        let raw = self
            .call(
                Method::GET,
                &["users", user_id],
                &[("$select", select)],
                None,
                &[404],
            )
            .await?;
        Ok((raw.status != 404).then_some(raw.body))
    }

    /// The groups the user is a direct member of (`GET /v1.0/users/{id}/memberOf`).
    /// <https://learn.microsoft.com/en-us/graph/api/user-list-memberof>
    async fn groups(&self, user_id: &str) -> Result<Option<Vec<Entitlement>>, ConnectorError> {
        Ok(self
            .list(
                &["users", user_id, "memberOf"],
                &[("$select", "id,displayName,groupTypes,onPremisesSyncEnabled")],
            )
            .await?
            .map(|objects| objects.iter().filter_map(group_entitlement).collect()))
    }

    fn account(&self, user: &Value, mut entitlements: Vec<Entitlement>) -> Option<Account> {
        let id = user["id"].as_str()?;
        entitlements.sort();
        entitlements.dedup();
        Some(Account {
            system: self.system.clone(),
            id: id.to_string(),
            username: user["userPrincipalName"].as_str().unwrap_or(id).to_string(),
            email: user["mail"].as_str().map(str::to_string),
            active: user["accountEnabled"].as_bool().unwrap_or(true),
            entitlements,
            credentials: Vec::new(),
            last_activity: time(&user["signInActivity"]["lastSignInDateTime"]),
        })
    }

    fn target<'t>(&self, task: &'t Task) -> Result<(&'t str, &'t str), ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} acts on an entitlement but names no target",
                task.task_id
            ))
        })?;
        match target.kind.as_str() {
            "group" | "license" => Ok((target.kind.as_str(), target.id.as_str())),
            "dynamic_group" => Err(ConnectorError::Unsupported(format!(
                "remove the user from \"{}\": its membership is dynamic (a rule decides it); change the rule or the user's attributes",
                target.name
            ))),
            "synced_group" => Err(ConnectorError::Unsupported(format!(
                "remove the user from \"{}\": the group is synchronised from on-premises Active Directory; remove the membership there",
                target.name
            ))),
            other => Err(ConnectorError::Unsupported(format!(
                "act on a \"{other}\" entitlement (groups and licenses only)"
            ))),
        }
    }

    fn revocation(&self, user_id: &str) -> Option<DateTime<Utc>> {
        self.revoked
            .lock()
            .ok()
            .and_then(|revoked| revoked.get(user_id).copied())
    }

    /// Whether `valid_from` shows a revocation at or after `at` (within the clock skew).
    fn covers(valid_from: Option<DateTime<Utc>>, at: DateTime<Utc>) -> bool {
        let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
        valid_from.is_some_and(|from| from >= at - skew)
    }

    /// `POST /v1.0/users/{id}/revokeSignInSessions`
    /// <https://learn.microsoft.com/en-us/graph/api/user-revokesigninsessions>
    async fn revoke_sessions(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        let Some(user) = self
            .user(user_id, "id,signInSessionsValidFromDateTime")
            .await?
        else {
            return Ok(Applied::AlreadyDone);
        };
        if let Some(at) = self.revocation(user_id) {
            if Self::covers(time(&user["signInSessionsValidFromDateTime"]), at) {
                return Ok(Applied::AlreadyDone);
            }
        }
        let at = Utc::now();
        let raw = self
            .call(
                Method::POST,
                &["users", user_id, "revokeSignInSessions"],
                &[],
                None,
                &[404],
            )
            .await?;
        if raw.status == 404 {
            return Ok(Applied::AlreadyDone);
        }
        if raw.body["value"].as_bool() != Some(true) {
            return Err(ConnectorError::Transient(format!(
                "system \"{}\": revokeSignInSessions of user {user_id} answered {} instead of value: true",
                self.system, raw.body
            )));
        }
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.insert(user_id.to_string(), at);
        }
        Ok(Applied::Changed)
    }

    /// `PATCH /v1.0/users/{id}` with `{"accountEnabled": false}` (or `true`, the restore of
    /// a rehire). A user that is gone is disabled already, and cannot be enabled.
    /// <https://learn.microsoft.com/en-us/graph/api/user-update>
    async fn set_enabled(&self, user_id: &str, enabled: bool) -> Result<Applied, ConnectorError> {
        let gone = || {
            ConnectorError::NotFound(format!(
                "system \"{}\": user {user_id} no longer exists (restore it from deleted items first), so it cannot be enabled again",
                self.system
            ))
        };
        let Some(user) = self.user(user_id, "id,accountEnabled").await? else {
            return if enabled {
                Err(gone())
            } else {
                Ok(Applied::AlreadyDone)
            };
        };
        if user["accountEnabled"].as_bool().unwrap_or(true) == enabled {
            return Ok(Applied::AlreadyDone);
        }
        let body = json!({"accountEnabled": enabled});
        let raw = self
            .call(Method::PATCH, &["users", user_id], &[], Some(&body), &[404])
            .await?;
        match raw.status {
            404 if enabled => Err(gone()),
            404 => Ok(Applied::AlreadyDone),
            _ => Ok(Applied::Changed),
        }
    }

    /// `POST /v1.0/groups/{gid}/members/$ref`: the restore of a removed membership.
    /// <https://learn.microsoft.com/en-us/graph/api/group-post-members>
    async fn add_member(&self, group_id: &str, user_id: &str) -> Result<Applied, ConnectorError> {
        let groups = self.groups(user_id).await?.ok_or_else(|| {
            ConnectorError::NotFound(format!(
                "system \"{}\": user {user_id} no longer exists, so it cannot be added to group {group_id} again",
                self.system
            ))
        })?;
        if groups.iter().any(|g| g.id == group_id) {
            return Ok(Applied::AlreadyDone);
        }
        let body = json!({
            "@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{user_id}")
        });
        self.call(
            Method::POST,
            &["groups", group_id, "members", "$ref"],
            &[],
            Some(&body),
            &[],
        )
        .await?;
        Ok(Applied::Changed)
    }

    /// `POST /v1.0/users/{id}/assignLicense` with `addLicenses`: the restore of a removed
    /// license.
    /// <https://learn.microsoft.com/en-us/graph/api/user-assignlicense>
    async fn add_license(&self, sku: &str, user_id: &str) -> Result<Applied, ConnectorError> {
        let user = self
            .user(user_id, "id,assignedLicenses")
            .await?
            .ok_or_else(|| {
                ConnectorError::NotFound(format!(
                    "system \"{}\": user {user_id} no longer exists, so license {sku} cannot be assigned again",
                    self.system
                ))
            })?;
        if has_license(&user, sku) {
            return Ok(Applied::AlreadyDone);
        }
        let body =
            json!({"addLicenses": [{"skuId": sku, "disabledPlans": []}], "removeLicenses": []});
        self.call(
            Method::POST,
            &["users", user_id, "assignLicense"],
            &[],
            Some(&body),
            &[],
        )
        .await?;
        Ok(Applied::Changed)
    }

    /// `DELETE /v1.0/groups/{gid}/members/{uid}/$ref`
    /// <https://learn.microsoft.com/en-us/graph/api/group-delete-members>
    async fn remove_member(
        &self,
        group_id: &str,
        user_id: &str,
    ) -> Result<Applied, ConnectorError> {
        let Some(groups) = self.groups(user_id).await? else {
            return Ok(Applied::AlreadyDone);
        };
        if !groups.iter().any(|g| g.id == group_id) {
            return Ok(Applied::AlreadyDone);
        }
        let raw = self
            .call(
                Method::DELETE,
                &["groups", group_id, "members", user_id, "$ref"],
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

    /// `POST /v1.0/users/{id}/assignLicense` with `removeLicenses`.
    /// <https://learn.microsoft.com/en-us/graph/api/user-assignlicense>
    async fn remove_license(&self, sku: &str, user_id: &str) -> Result<Applied, ConnectorError> {
        let Some(user) = self.user(user_id, "id,assignedLicenses").await? else {
            return Ok(Applied::AlreadyDone);
        };
        if !has_license(&user, sku) {
            return Ok(Applied::AlreadyDone);
        }
        let body = json!({"addLicenses": [], "removeLicenses": [sku]});
        let raw = self
            .call(
                Method::POST,
                &["users", user_id, "assignLicense"],
                &[],
                Some(&body),
                &[404],
            )
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    /// `DELETE /v1.0/users/{id}`
    /// <https://learn.microsoft.com/en-us/graph/api/user-delete>
    async fn delete(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        let raw = self
            .call(Method::DELETE, &["users", user_id], &[], None, &[404])
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    async fn evidence(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let user_id = task.account.id.as_str();
        let get = |select: &str| {
            format!(
                "{}?$select={select}",
                describe(&Method::GET, &["v1.0", "users", user_id])
            )
        };
        let restoring = task.stage() == StageKind::Restore;
        let gone = |request: String| Evidence {
            // Gone proves a removal, never a restore.
            verified: !restoring,
            observed: json!({"request": request, "status": 404}),
        };
        match task.action {
            Action::RevokeSessions => {
                let select = "id,signInSessionsValidFromDateTime";
                let Some(user) = self.user(user_id, select).await? else {
                    return Ok(gone(get(select)));
                };
                let valid_from = time(&user["signInSessionsValidFromDateTime"]);
                let at = self.revocation(user_id);
                Ok(Evidence {
                    verified: at.is_some_and(|at| Self::covers(valid_from, at)),
                    observed: json!({
                        "request": get(select),
                        "status": 200,
                        "signInSessionsValidFromDateTime": user["signInSessionsValidFromDateTime"],
                        "revokeSignInSessions": at.map(|at| json!({"value": true, "at": at.to_rfc3339()})),
                        "note": "tokens issued before signInSessionsValidFromDateTime are refused; it must not be earlier than the revocation (60 s clock skew allowed)",
                    }),
                })
            }
            Action::Disable | Action::Delete | Action::Enable => {
                let select = "id,accountEnabled";
                let Some(user) = self.user(user_id, select).await? else {
                    return Ok(gone(get(select)));
                };
                let enabled = user["accountEnabled"].as_bool().unwrap_or(true);
                Ok(Evidence {
                    verified: match task.action {
                        Action::Disable => !enabled,
                        Action::Enable => enabled,
                        _ => false,
                    },
                    observed: json!({"request": get(select), "status": 200, "accountEnabled": enabled}),
                })
            }
            Action::RemoveEntitlement | Action::RestoreEntitlement => {
                let (kind, id) = self.target(task)?;
                if kind == "license" {
                    let select = "id,assignedLicenses";
                    let Some(user) = self.user(user_id, select).await? else {
                        return Ok(gone(get(select)));
                    };
                    let held = has_license(&user, id);
                    return Ok(Evidence {
                        verified: held == restoring,
                        observed: json!({"request": get(select), "status": 200, "license": id, "assigned": held}),
                    });
                }
                let request = describe(&Method::GET, &["v1.0", "users", user_id, "memberOf"]);
                let Some(groups) = self.groups(user_id).await? else {
                    return Ok(gone(request));
                };
                let member = groups.iter().any(|g| g.id == id);
                Ok(Evidence {
                    verified: member == restoring,
                    observed: json!({"request": request, "status": 200, "group": id, "member": member}),
                })
            }
            other => Err(ConnectorError::Unsupported(format!(
                "verify {} (the Microsoft Graph connector has no such operation)",
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
impl Connector for GraphConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    /// `GET /v1.0/users?$filter=userPrincipalName eq '…' or mail eq '…'`
    /// <https://learn.microsoft.com/en-us/graph/api/user-list>
    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("msgraph.discover", system = %self.system, person_id = %person.person_id);
        async {
            let filter = person_filter(person, self.match_by);
            let users = self
                .list(
                    &["users"],
                    &[("$filter", &filter), ("$select", USER_SELECT)],
                )
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
                let mut entitlements = self.groups(id).await?.unwrap_or_default();
                entitlements.extend(direct_licenses(&user));
                accounts.extend(self.account(&user, entitlements));
            }
            Ok(accounts)
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("msgraph.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let user_id = task.account.id.as_str();
            let applied = match task.action {
                Action::RevokeSessions => self.revoke_sessions(user_id).await,
                Action::Disable => self.set_enabled(user_id, false).await,
                Action::Enable => self.set_enabled(user_id, true).await,
                Action::RemoveEntitlement => match self.target(task)? {
                    ("license", sku) => self.remove_license(sku, user_id).await,
                    (_, group) => self.remove_member(group, user_id).await,
                },
                Action::RestoreEntitlement => match self.target(task)? {
                    ("license", sku) => self.add_license(sku, user_id).await,
                    (_, group) => self.add_member(group, user_id).await,
                },
                Action::Delete => self.delete(user_id).await,
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (the Microsoft Graph connector has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "msgraph apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("msgraph.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        self.evidence(task).instrument(span).await
    }

    /// Every user with `signInActivity.lastSignInDateTime` (needs AuditLog.Read.All).
    /// <https://learn.microsoft.com/en-us/graph/api/resources/signinactivity>
    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let users = self
            .list(
                &["users"],
                &[(
                    "$select",
                    "id,userPrincipalName,mail,accountEnabled,signInActivity",
                )],
            )
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
        crate::test_config("msgraph", connection, secret)
    }

    #[test]
    fn settings_are_checked() {
        let ok = config(json!({"tenant": "contoso.onmicrosoft.com"}), Some("s"));
        let settings = Settings::parse("entra", &ok).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(
            settings.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(settings.base_url.as_str(), "https://graph.microsoft.com/");
        let problems =
            GraphConnector::check_config("entra", &config(json!({"page_size": 5000}), None));
        let all = problems.join("\n");
        for needle in [
            "systems.entra.connection.tenant is required",
            "systems.entra.connection.page_size = 5000 must be a whole number from 1 to 999",
            "systems.entra.secret is required",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
    }

    #[test]
    fn odata_literals_double_quotes() {
        let person = PersonQuery {
            person_id: "1".into(),
            email: "o'brien@example.com".into(),
            username: None,
        };
        assert_eq!(
            person_filter(&person, MatchBy::Username),
            "userPrincipalName eq 'o''brien@example.com' or mail eq 'o''brien@example.com'"
        );
    }

    #[test]
    fn only_groups_and_direct_licenses_are_entitlements() {
        assert!(group_entitlement(
            &json!({"@odata.type": "#microsoft.graph.directoryRole", "id": "r"})
        )
        .is_none());
        let dynamic = group_entitlement(
            &json!({"@odata.type": "#microsoft.graph.group", "id": "g", "groupTypes": ["DynamicMembership"]}),
        );
        assert_eq!(dynamic.map(|g| g.kind), Some("dynamic_group".into()));
        let user = json!({
            "assignedLicenses": [{"skuId": "a"}, {"skuId": "b"}],
            "licenseAssignmentStates": [{"skuId": "a", "assignedByGroup": null}, {"skuId": "b", "assignedByGroup": "g"}],
        });
        let licenses: Vec<String> = direct_licenses(&user).into_iter().map(|l| l.id).collect();
        assert_eq!(licenses, ["a"]);
    }
}
