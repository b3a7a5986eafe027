//! SCIM 2.0 connector (RFC 7643 resources, RFC 7644 protocol).
//!
//! Accounts are `/Users`, entitlements are the `/Groups` a user is a member of.
//! - disable: `PATCH /Users/{id}` replacing `active` with `false`;
//! - remove entitlement: `PATCH /Groups/{gid}` removing `members[value eq "{id}"]`;
//! - delete: `DELETE /Users/{id}`.
//!
//! Every change first reads the resource: a state already reached is `AlreadyDone`, and its
//! version (`ETag` header or `meta.version`) goes into `If-Match`, so a concurrent edit
//! makes the change fail with 412 instead of overwriting it; the resource is then read again
//! and the change retried at once (contention is not a failed attempt). A server that does
//! not implement PATCH (it is optional in RFC 7644) answering 405 or 501 gets a `PUT` of the
//! resource read, changed.
//!
//! Policy settings (`[systems.<name>]`, `kind = "scim"`):
//! `secret` (the bearer token is its field `token_field`), and `connection` keys
//! `base_url` (required), `page_size` (100), `timeout_secs` (30), `token_field` ("token").

mod client;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::{MatchBy, SystemConfig};
use deprov_core::ports::SecretSource;
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Entitlement, Evidence, PersonQuery,
};
use reqwest::{Method, Url};
use serde_json::{json, Map, Value};
use tracing::Instrument;

use self::client::{describe, Http, Reply};

const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 1000;
const DEFAULT_TIMEOUT_SECS: u64 = 30;
const MAX_TIMEOUT_SECS: u64 = 600;
const DEFAULT_TOKEN_FIELD: &str = "token";
const CONNECTION_KEYS: &[&str] = &["base_url", "page_size", "timeout_secs", "token_field"];
/// A listing that has not ended after this many pages is refused rather than followed.
const MAX_PAGES: usize = 10_000;
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const BASE_URL_EXAMPLE: &str = "https://app.example.com/scim/v2";

/// The connection settings, validated.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    base_url: Url,
    page_size: u64,
    timeout: Duration,
    token_field: String,
    secret: String,
}

impl Settings {
    /// Every problem of the system's settings, each saying what to fix.
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        let key = |name: &str| format!("systems.{system}.connection.{name}");
        let connection = &config.connection;

        for name in connection.keys() {
            if !CONNECTION_KEYS.contains(&name.as_str()) {
                problems.push(format!(
                    "{} is not a SCIM setting; the SCIM settings are {}",
                    key(name),
                    CONNECTION_KEYS.join(", ")
                ));
            }
        }

        let base_url = match connection.get("base_url") {
            None => {
                problems.push(format!(
                    "{} is required: the SCIM base URL, e.g. {BASE_URL_EXAMPLE}",
                    key("base_url")
                ));
                None
            }
            Some(Value::String(text)) => match check_base_url(text) {
                Ok(url) => Some(url),
                Err(why) => {
                    problems.push(format!(
                        "{} = \"{text}\" {why}, e.g. {BASE_URL_EXAMPLE}",
                        key("base_url")
                    ));
                    None
                }
            },
            Some(other) => {
                problems.push(format!(
                    "{} must be a string (the SCIM base URL, e.g. \"{BASE_URL_EXAMPLE}\"), not {other}",
                    key("base_url")
                ));
                None
            }
        };

        let mut number = |name: &str, default: u64, max: u64| match connection.get(name) {
            None => default,
            Some(value) => match value.as_u64() {
                Some(n) if (1..=max).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "{} = {value} must be a whole number from 1 to {max} (default {default})",
                        key(name)
                    ));
                    default
                }
            },
        };
        let page_size = number("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
        let timeout_secs = number("timeout_secs", DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS);

        let token_field = match connection.get("token_field") {
            None => DEFAULT_TOKEN_FIELD.to_string(),
            Some(Value::String(field)) if !field.trim().is_empty() => field.clone(),
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be the name of the secret's field holding the bearer token (default \"{DEFAULT_TOKEN_FIELD}\")",
                    key("token_field")
                ));
                DEFAULT_TOKEN_FIELD.to_string()
            }
        };

        let secret = match config.secret.as_deref() {
            Some(name) if !name.trim().is_empty() => Some(name.to_string()),
            _ => {
                problems.push(format!(
                    "systems.{system}.secret is required for a scim system: the name of the secret whose field \"{token_field}\" holds the bearer token, e.g. secret = \"deprov/connector/{system}\""
                ));
                None
            }
        };

        match (base_url, secret) {
            (Some(base_url), Some(secret)) if problems.is_empty() => Ok(Settings {
                base_url,
                page_size,
                timeout: Duration::from_secs(timeout_secs),
                token_field,
                secret,
            }),
            _ => Err(problems),
        }
    }
}

fn check_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|err| format!("is not a URL ({err})"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!(
            "must be an https:// (or http://) URL, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry a user name or password (the bearer token comes from the secret)"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    Ok(url)
}

/// A SCIM filter string literal: a JSON string, so `"` and `\` (and control characters)
/// are escaped.
fn quote(value: &str) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// The filter that finds a person's users: by the system username when one is known, and
/// by the email as `userName` or as any of the user's `emails`.
fn person_filter(person: &PersonQuery, match_by: MatchBy) -> String {
    let mut clauses = Vec::new();
    if let (MatchBy::Username, Some(username)) = (match_by, person.username.as_deref()) {
        if !username.is_empty() {
            clauses.push(format!("userName eq {}", quote(username)));
        }
    }
    let email = quote(&person.email);
    let by_email = [
        format!("userName eq {email}"),
        format!("emails.value eq {email}"),
    ];
    for clause in by_email {
        if !clauses.contains(&clause) {
            clauses.push(clause);
        }
    }
    clauses.join(" or ")
}

/// `members[value eq "<uid>"]`, the PATCH path of one member.
fn member_path(user_id: &str) -> String {
    format!("members[value eq {}]", quote(user_id))
}

/// Whether a group resource lists the user among its members.
fn is_member(group: &Value, user_id: &str) -> bool {
    group["members"]
        .as_array()
        .is_some_and(|members| members.iter().any(|m| m["value"].as_str() == Some(user_id)))
}

/// `active` as the server reports it; absent means active (RFC 7643 leaves the default to
/// the server, and an account nobody disabled is live).
fn is_active(user: &Value) -> bool {
    user["active"].as_bool().unwrap_or(true)
}

fn primary_email(user: &Value) -> Option<String> {
    let emails = user["emails"].as_array()?;
    emails
        .iter()
        .find(|email| email["primary"].as_bool() == Some(true))
        .or_else(|| emails.first())
        .and_then(|email| email["value"].as_str())
        .map(str::to_string)
}

fn group_entitlement(id: &str, name: Option<&str>) -> Entitlement {
    Entitlement {
        id: id.to_string(),
        name: name.filter(|n| !n.is_empty()).unwrap_or(id).to_string(),
        kind: "group".into(),
    }
}

/// The groups listed in a user's own `groups` attribute, when the server returns it.
fn groups_of_user(user: &Value) -> Option<Vec<Entitlement>> {
    let groups = user["groups"].as_array()?;
    Some(
        groups
            .iter()
            .filter_map(|group| {
                let id = group["value"].as_str()?;
                Some(group_entitlement(id, group["display"].as_str()))
            })
            .collect(),
    )
}

fn observed(request: &str, reply: &Reply) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("request".into(), json!(request));
    map.insert("status".into(), json!(reply.status));
    if let Some(version) = &reply.version {
        map.insert("version".into(), json!(version));
    }
    map
}

/// How many times in a row a read-modify-write is tried again at once because the resource
/// changed between the read and the write (HTTP 412 on `If-Match`).
const MAX_CONTENDED_WRITES: usize = 16;

/// Runs a read-modify-write until it is not overtaken by a concurrent edit: a 412 means
/// someone else changed the resource (another worker removing another member of a shared
/// group, most often), so it is read again and retried at once, not counted as a failed
/// attempt. Contention that never lets up is transient.
async fn contended<F, Fut>(resource: &str, mut write: F) -> Result<Applied, ConnectorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Applied>, ConnectorError>>,
{
    for _ in 0..MAX_CONTENDED_WRITES {
        if let Some(applied) = write().await? {
            return Ok(applied);
        }
    }
    Err(ConnectorError::Transient(format!(
        "SCIM {resource} changed between each read and write {MAX_CONTENDED_WRITES} times in a row (HTTP 412); the next attempt reads it again"
    )))
}

/// The bodies a PUT fallback sends: the resource as read, changed, without what the
/// server owns.
fn put_body(mut resource: Value, change: impl FnOnce(&mut Map<String, Value>)) -> Value {
    if let Some(object) = resource.as_object_mut() {
        object.remove("meta");
        change(object);
    }
    resource
}

pub struct ScimConnector {
    system: String,
    settings: Settings,
    match_by: MatchBy,
    http: Http,
}

impl std::fmt::Debug for ScimConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScimConnector")
            .field("system", &self.system)
            .field("base_url", &self.settings.base_url.as_str())
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl ScimConnector {
    /// Builds the connector of one policy system. Nothing is fetched yet: the bearer token
    /// is read from `secrets` on first use.
    pub fn from_config(
        system: &str,
        config: &SystemConfig,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Self, ConnectorError> {
        let settings = Settings::parse(system, config)
            .map_err(|problems| ConnectorError::InvalidConfig(problems.join("; ")))?;
        let http = Http::new(
            system,
            settings.base_url.clone(),
            settings.timeout,
            usize::try_from(config.concurrency.max(1)).unwrap_or(1),
            secrets,
            &settings.secret,
            &settings.token_field,
        )?;
        Ok(ScimConnector {
            system: system.to_string(),
            settings,
            match_by: config.match_by,
            http,
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    async fn get(&self, segments: &[&str], pass: &[u16]) -> Result<Reply, ConnectorError> {
        self.http
            .send(Method::GET, segments, &[], None, None, pass)
            .await
    }

    /// Every resource of a listing, page by page (`startIndex`/`count`, RFC 7644 §3.4.2.4).
    async fn list(
        &self,
        resource: &str,
        filter: Option<&str>,
        attributes: Option<&str>,
    ) -> Result<Vec<Value>, ConnectorError> {
        let mut found = Vec::new();
        let mut start: u64 = 1;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("startIndex", start.to_string()),
                ("count", self.settings.page_size.to_string()),
            ];
            if let Some(filter) = filter {
                query.push(("filter", filter.to_string()));
            }
            if let Some(attributes) = attributes {
                query.push(("attributes", attributes.to_string()));
            }
            let reply = self
                .http
                .send(Method::GET, &[resource], &query, None, None, &[])
                .await?;
            let page = match reply.body.get("Resources") {
                Some(Value::Array(items)) => items.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(_) => {
                    return Err(ConnectorError::Permanent(format!(
                        "system \"{}\": GET /{resource} answered a list whose Resources is not an array",
                        self.system
                    )))
                }
            };
            let total = reply.body["totalResults"].as_u64();
            let count = page.len() as u64;
            found.extend(page);
            let done = match total {
                _ if count == 0 => true,
                Some(total) => found.len() as u64 >= total,
                None => count < self.settings.page_size,
            };
            if done {
                return Ok(found);
            }
            start += count;
        }
        Err(ConnectorError::Permanent(format!(
            "system \"{}\": listing /{resource} did not end after {MAX_PAGES} pages of {}",
            self.system, self.settings.page_size
        )))
    }

    /// The groups a user is a member of: from `GET /Groups?filter=members.value eq "<id>"`,
    /// or, on a server that cannot filter on members, from every group's member list.
    async fn groups_by_member(&self, user_id: &str) -> Result<Vec<Entitlement>, ConnectorError> {
        let filter = format!("members.value eq {}", quote(user_id));
        match self
            .list("Groups", Some(&filter), Some("id,displayName"))
            .await
        {
            Ok(groups) => Ok(groups
                .iter()
                .filter_map(|group| {
                    Some(group_entitlement(
                        group["id"].as_str()?,
                        group["displayName"].as_str(),
                    ))
                })
                .collect()),
            Err(ConnectorError::Permanent(message))
                if message.contains("invalidFilter") || message.contains("HTTP 501") =>
            {
                tracing::debug!(system = %self.system, "no filter on members.value; scanning the groups");
                let mut memberships = self.memberships().await?;
                Ok(memberships.remove(user_id).unwrap_or_default())
            }
            Err(err) => Err(err),
        }
    }

    /// Every user's groups, from one pass over all groups.
    async fn memberships(&self) -> Result<BTreeMap<String, Vec<Entitlement>>, ConnectorError> {
        let mut by_user: BTreeMap<String, Vec<Entitlement>> = BTreeMap::new();
        for group in self
            .list("Groups", None, Some("id,displayName,members"))
            .await?
        {
            let Some(id) = group["id"].as_str() else {
                continue;
            };
            let entitlement = group_entitlement(id, group["displayName"].as_str());
            for member in group["members"].as_array().into_iter().flatten() {
                if let Some(user) = member["value"].as_str() {
                    by_user
                        .entry(user.to_string())
                        .or_default()
                        .push(entitlement.clone());
                }
            }
        }
        Ok(by_user)
    }

    fn account(&self, user: &Value, mut entitlements: Vec<Entitlement>) -> Option<Account> {
        let id = user["id"].as_str()?;
        entitlements.sort();
        entitlements.dedup();
        Some(Account {
            system: self.system.clone(),
            id: id.to_string(),
            username: user["userName"].as_str().unwrap_or(id).to_string(),
            email: primary_email(user),
            active: is_active(user),
            entitlements,
            credentials: Vec::new(),
            last_activity: None,
        })
    }

    fn target_group<'t>(&self, task: &'t Task) -> Result<&'t str, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} acts on an entitlement but names no target group",
                task.task_id
            ))
        })?;
        if target.kind != "group" {
            return Err(ConnectorError::Unsupported(format!(
                "act on a \"{}\" entitlement (SCIM manages groups only)",
                target.kind
            )));
        }
        Ok(&target.id)
    }

    /// Sets the user's `active` (disable, or enable when restoring). A user that is gone is
    /// disabled already, and cannot be enabled.
    async fn set_active(&self, user_id: &str, active: bool) -> Result<Applied, ConnectorError> {
        contended(&format!("user {user_id}"), || {
            self.set_active_once(user_id, active)
        })
        .await
    }

    /// One read-modify-write of `active`; `None` when the user changed since it was read.
    async fn set_active_once(
        &self,
        user_id: &str,
        active: bool,
    ) -> Result<Option<Applied>, ConnectorError> {
        let path = ["Users", user_id];
        let gone = || {
            ConnectorError::NotFound(format!(
                "SCIM user {user_id} no longer exists, so it cannot be enabled again"
            ))
        };
        let user = self.get(&path, &[404]).await?;
        if user.status == 404 {
            return if active {
                Err(gone())
            } else {
                Ok(Some(Applied::AlreadyDone))
            };
        }
        if is_active(&user.body) == active {
            return Ok(Some(Applied::AlreadyDone));
        }
        let patch = json!({
            "schemas": [PATCH_OP],
            "Operations": [{"op": "replace", "path": "active", "value": active}],
        });
        let reply = self
            .http
            .send(
                Method::PATCH,
                &path,
                &[],
                Some(&patch),
                user.version.as_deref(),
                &[404, 405, 412, 501],
            )
            .await?;
        match reply.status {
            404 if active => Err(gone()),
            404 => Ok(Some(Applied::AlreadyDone)),
            412 => Ok(None),
            405 | 501 => {
                let body = put_body(user.body, |object| {
                    object.insert("active".into(), json!(active));
                });
                self.put(&path, &body, user.version.as_deref()).await
            }
            _ => Ok(Some(Applied::Changed)),
        }
    }

    /// Removes the user from the group, or adds them back when restoring. A group that is
    /// gone holds nobody, and cannot take anyone back.
    async fn set_member(
        &self,
        group_id: &str,
        user_id: &str,
        member: bool,
    ) -> Result<Applied, ConnectorError> {
        contended(&format!("group {group_id}"), || {
            self.set_member_once(group_id, user_id, member)
        })
        .await
    }

    /// One read-modify-write of the group's members; `None` when the group changed since it
    /// was read.
    async fn set_member_once(
        &self,
        group_id: &str,
        user_id: &str,
        member: bool,
    ) -> Result<Option<Applied>, ConnectorError> {
        let path = ["Groups", group_id];
        let gone = || {
            ConnectorError::NotFound(format!(
                "SCIM group {group_id} no longer exists, so user {user_id} cannot be added back"
            ))
        };
        let group = self.get(&path, &[404]).await?;
        if group.status == 404 {
            return if member {
                Err(gone())
            } else {
                Ok(Some(Applied::AlreadyDone))
            };
        }
        if is_member(&group.body, user_id) == member {
            return Ok(Some(Applied::AlreadyDone));
        }
        let operation = if member {
            json!({"op": "add", "path": "members", "value": [{"value": user_id}]})
        } else {
            json!({"op": "remove", "path": member_path(user_id)})
        };
        let patch = json!({"schemas": [PATCH_OP], "Operations": [operation]});
        let reply = self
            .http
            .send(
                Method::PATCH,
                &path,
                &[],
                Some(&patch),
                group.version.as_deref(),
                &[404, 405, 412, 501],
            )
            .await?;
        match reply.status {
            404 if member => Err(gone()),
            404 => Ok(Some(Applied::AlreadyDone)),
            412 => Ok(None),
            405 | 501 => {
                let body = put_body(group.body, |object| {
                    let members = object.entry("members").or_insert_with(|| json!([]));
                    if let Value::Array(members) = members {
                        members.retain(|m| m["value"].as_str() != Some(user_id));
                        if member {
                            members.push(json!({"value": user_id}));
                        }
                    }
                });
                self.put(&path, &body, group.version.as_deref()).await
            }
            _ => Ok(Some(Applied::Changed)),
        }
    }

    /// A whole resource written back; `None` when it changed since it was read.
    async fn put(
        &self,
        path: &[&str],
        body: &Value,
        version: Option<&str>,
    ) -> Result<Option<Applied>, ConnectorError> {
        let reply = self
            .http
            .send(Method::PUT, path, &[], Some(body), version, &[404, 412])
            .await?;
        Ok(match reply.status {
            404 => Some(Applied::AlreadyDone),
            412 => None,
            _ => Some(Applied::Changed),
        })
    }

    async fn delete(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        let reply = self
            .http
            .send(Method::DELETE, &["Users", user_id], &[], None, None, &[404])
            .await?;
        Ok(if reply.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }
}

const SUPPORTS: &[StageKind] = &[
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Delete,
    StageKind::Restore,
];

#[async_trait]
impl Connector for ScimConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("scim.discover", system = %self.system, person_id = %person.person_id);
        async {
            let filter = person_filter(person, self.match_by);
            let users = self.list("Users", Some(&filter), None).await?;
            let mut seen = BTreeSet::new();
            let mut accounts = Vec::new();
            for user in users {
                let Some(id) = user["id"].as_str().map(str::to_string) else {
                    continue;
                };
                if !seen.insert(id.clone()) {
                    continue;
                }
                let entitlements = match groups_of_user(&user) {
                    Some(groups) => groups,
                    None => self.groups_by_member(&id).await?,
                };
                accounts.extend(self.account(&user, entitlements));
            }
            tracing::debug!(accounts = accounts.len(), "scim discovery done");
            Ok(accounts)
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("scim.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let user_id = task.account.id.as_str();
            let applied = match task.action {
                Action::Disable => self.set_active(user_id, false).await,
                Action::Enable => self.set_active(user_id, true).await,
                Action::RemoveEntitlement => {
                    let group_id = self.target_group(task)?;
                    self.set_member(group_id, user_id, false).await
                }
                Action::RestoreEntitlement => {
                    let group_id = self.target_group(task)?;
                    self.set_member(group_id, user_id, true).await
                }
                Action::Delete => self.delete(user_id).await,
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (SCIM has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "scim apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("scim.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let user_id = task.account.id.as_str();
            let evidence = match task.action {
                Action::Disable | Action::Delete | Action::Enable => {
                    let path = ["Users", user_id];
                    let reply = self.get(&path, &[404]).await?;
                    let mut seen = observed(&describe(&Method::GET, &path), &reply);
                    let verified = if reply.status == 404 {
                        task.action != Action::Enable
                    } else {
                        let active = is_active(&reply.body);
                        seen.insert("active".into(), json!(active));
                        match task.action {
                            Action::Disable => !active,
                            Action::Enable => active,
                            _ => false,
                        }
                    };
                    Evidence {
                        verified,
                        observed: Value::Object(seen),
                    }
                }
                Action::RemoveEntitlement | Action::RestoreEntitlement => {
                    let group_id = self.target_group(task)?;
                    let path = ["Groups", group_id];
                    let reply = self.get(&path, &[404]).await?;
                    let mut seen = observed(&describe(&Method::GET, &path), &reply);
                    let member = reply.status != 404 && is_member(&reply.body, user_id);
                    if reply.status != 404 {
                        seen.insert("member".into(), json!(member));
                        if let Some(name) = reply.body["displayName"].as_str() {
                            seen.insert("group".into(), json!(name));
                        }
                    }
                    Evidence {
                        verified: member == (task.action == Action::RestoreEntitlement),
                        observed: Value::Object(seen),
                    }
                }
                other => {
                    return Err(ConnectorError::Unsupported(format!(
                        "verify {} (SCIM has no such operation)",
                        other.as_str().replace('_', " ")
                    )))
                }
            };
            tracing::debug!(verified = evidence.verified, "scim verify done");
            Ok(evidence)
        }
        .instrument(span)
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("scim.list_accounts", system = %self.system);
        async {
            let users = self.list("Users", None, None).await?;
            let need_groups = users.iter().any(|user| groups_of_user(user).is_none());
            let mut memberships = if need_groups {
                self.memberships().await?
            } else {
                BTreeMap::new()
            };
            Ok(users
                .iter()
                .filter_map(|user| {
                    let id = user["id"].as_str()?;
                    let groups = groups_of_user(user)
                        .unwrap_or_else(|| memberships.remove(id).unwrap_or_default());
                    self.account(user, groups)
                })
                .collect())
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_core::testing::MemorySecrets;

    fn config(connection: Value, secret: Option<&str>) -> SystemConfig {
        crate::test_config("scim", connection, secret)
    }

    fn person(username: Option<&str>, email: &str) -> PersonQuery {
        PersonQuery {
            person_id: "E1".into(),
            email: email.into(),
            username: username.map(str::to_string),
        }
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(quote("ada"), "\"ada\"");
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(
            member_path("2819c223"),
            "members[value eq \"2819c223\"]".to_string()
        );
        assert_eq!(
            person_filter(&person(Some("ada.l"), "ada@example.com"), MatchBy::Username),
            r#"userName eq "ada.l" or userName eq "ada@example.com" or emails.value eq "ada@example.com""#
        );
        assert_eq!(
            person_filter(&person(Some("ada.l"), "ada@example.com"), MatchBy::Email),
            r#"userName eq "ada@example.com" or emails.value eq "ada@example.com""#
        );
        assert_eq!(
            person_filter(
                &person(None, r#"x" or userName pr or "@x"#),
                MatchBy::Username
            ),
            r#"userName eq "x\" or userName pr or \"@x" or emails.value eq "x\" or userName pr or \"@x""#
        );
    }

    #[test]
    fn settings_defaults_and_problems() {
        let ok = config(
            json!({"base_url": "https://app.example.com/scim/v2/"}),
            Some("deprov/connector/crm"),
        );
        let settings = Settings::parse("crm", &ok).expect("valid settings");
        assert_eq!(settings.page_size, 100);
        assert_eq!(settings.timeout, Duration::from_secs(30));
        assert_eq!(settings.token_field, "token");
        assert!(ScimConnector::check_config("crm", &ok).is_empty());

        let problems = ScimConnector::check_config("crm", &config(json!({}), None));
        assert_eq!(
            problems,
            vec![
                "systems.crm.connection.base_url is required: the SCIM base URL, e.g. https://app.example.com/scim/v2".to_string(),
                "systems.crm.secret is required for a scim system: the name of the secret whose field \"token\" holds the bearer token, e.g. secret = \"deprov/connector/crm\"".to_string(),
            ]
        );

        let bad = config(
            json!({"base_url": "ftp://x/scim?a=1", "page_size": 0, "timeout_secs": "30",
                   "token_field": "", "base_uri": "x"}),
            Some("s"),
        );
        let problems = ScimConnector::check_config("crm", &bad);
        assert_eq!(problems.len(), 5, "{problems:#?}");
        let all = problems.join("\n");
        for needle in [
            "systems.crm.connection.base_uri is not a SCIM setting",
            "systems.crm.connection.base_url = \"ftp://x/scim?a=1\" must be an https://",
            "systems.crm.connection.page_size = 0 must be a whole number from 1 to 1000",
            "systems.crm.connection.timeout_secs = \"30\" must be a whole number",
            "systems.crm.connection.token_field",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }

        for (url, why) in [
            ("https://app.example.com/scim?x=1", "query"),
            ("https://u:p@app.example.com/scim", "user name or password"),
            ("not a url", "is not a URL"),
        ] {
            let problems =
                ScimConnector::check_config("crm", &config(json!({"base_url": url}), Some("s")));
            assert!(
                problems.len() == 1 && problems[0].contains(why),
                "{url}: {problems:?}"
            );
        }
    }

    #[test]
    fn from_config_reports_every_problem() {
        let secrets: Arc<dyn SecretSource> = Arc::new(MemorySecrets::default());
        let err = ScimConnector::from_config("crm", &config(json!({}), None), secrets)
            .expect_err("invalid config");
        assert!(matches!(err, ConnectorError::InvalidConfig(_)));
        assert!(err.to_string().contains("base_url is required"));
        assert!(err.to_string().contains("secret is required"));
    }

    #[test]
    fn users_map_to_accounts() {
        let secrets: Arc<dyn SecretSource> = Arc::new(MemorySecrets::default());
        let connector = ScimConnector::from_config(
            "crm",
            &config(json!({"base_url": "http://127.0.0.1:1/scim"}), Some("s")),
            secrets,
        )
        .expect("connector");
        let user = json!({
            "id": "42", "userName": "ada.l",
            "emails": [{"value": "a@old.example"}, {"value": "ada@example.com", "primary": true}],
            "groups": [{"value": "g2", "display": "ops"}, {"value": "g1"}]
        });
        let groups = groups_of_user(&user).expect("groups attribute");
        let account = connector.account(&user, groups).expect("account");
        assert_eq!(account.username, "ada.l");
        assert_eq!(account.email.as_deref(), Some("ada@example.com"));
        assert!(account.active, "absent active means active");
        assert_eq!(
            account.entitlements,
            vec![
                group_entitlement("g1", None),
                group_entitlement("g2", Some("ops"))
            ]
        );
        assert_eq!(account.entitlements[0].name, "g1");
        assert!(!is_active(&json!({"active": false})));
        assert!(groups_of_user(&json!({"id": "1"})).is_none());
        assert!(is_member(&json!({"members": [{"value": "42"}]}), "42"));
        assert!(!is_member(&json!({"displayName": "empty"}), "42"));
    }

    #[test]
    fn put_fallback_drops_server_owned_meta() {
        let body = put_body(
            json!({"id": "1", "meta": {"version": "W/\"1\""}, "active": true}),
            |o| {
                o.insert("active".into(), json!(false));
            },
        );
        assert_eq!(body, json!({"id": "1", "active": false}));
    }
}
