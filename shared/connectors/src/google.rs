//! Google Workspace connector (Admin SDK Directory API and Data Transfer API), as a
//! service account with domain-wide delegation impersonating an admin.
//!
//! Accounts are Workspace users (the account id is Google's immutable user id);
//! entitlements are the groups they are a direct member of.
//! - sessions: `POST /admin/directory/v1/users/{userKey}/signOut`, then every OAuth token the
//!   user granted to an app is deleted (`GET …/tokens`, `DELETE …/tokens/{clientId}`);
//! - disable: `PUT /admin/directory/v1/users/{userKey}` `{"suspended": true}`;
//! - remove entitlement: `DELETE /admin/directory/v1/groups/{groupKey}/members/{memberKey}`;
//! - hand over data: `POST /admin/datatransfer/v1/transfers` (Drive, to the manager), one
//!   transfer per old → new owner;
//! - delete: `DELETE /admin/directory/v1/users/{userKey}` (restorable for 20 days).
//!
//! Google has no API that lists a user's web sessions, so `signOut` cannot be read back: the
//! evidence is the 204 of the sign-out this connector made and the (empty) token list, and
//! says so. A suspended user cannot sign in.
//!
//! The access token comes from the JWT bearer grant (RFC 7523): a JWT signed RS256 with the
//! service account's key, `sub` the admin to impersonate, posted to `token_url`; cached until
//! `expires_in` minus a margin, fetched again once when Google answers 401.
//! <https://developers.google.com/identity/protocols/oauth2/service-account#httprest>
//!
//! Policy settings (`[systems.<name>]`, `kind = "google"`): `secret` (fields `client_email`,
//! `private_key` (PEM, PKCS#8, as in the service account's JSON key file) and `subject`, the
//! admin user to impersonate), and `connection` keys `base_url`
//! ("https://admin.googleapis.com"), `token_url` ("https://oauth2.googleapis.com/token"),
//! `customer` ("my_customer"), `drive_application_id` (the Data Transfer application id of
//! Drive and Docs, required for the data stage), `page_size` (200), `timeout_secs` (30).
//!
//! Throttling: 429, and 403 with reason `userRateLimitExceeded` or `rateLimitExceeded`
//! (<https://developers.google.com/admin-sdk/directory/v1/limits>), are `Throttled`, with
//! the `Retry-After` when Google sends one (else the engine's exponential backoff, which is
//! what Google asks for).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::SystemConfig;
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
    "customer",
    "drive_application_id",
    "page_size",
    "timeout_secs",
    "token_url",
];
const DEFAULT_BASE_URL: &str = "https://admin.googleapis.com";
const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The scopes the service account must be granted in the domain-wide delegation.
pub const SCOPES: &str = "https://www.googleapis.com/auth/admin.directory.user https://www.googleapis.com/auth/admin.directory.group https://www.googleapis.com/auth/admin.datatransfer";
const CLIENT_EMAIL: &str = "client_email";
const PRIVATE_KEY: &str = "private_key";
const SUBJECT: &str = "subject";
/// `maxResults` of `users.list` and `groups.list` is at most 500 and 200.
const MAX_PAGE_SIZE: u64 = 200;
/// A token is dropped this long before Google says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime asked for in the assertion (Google's maximum is one hour).
const ASSERTION_TTL: i64 = 3600;
/// How often and how far apart `verify` reads a data transfer before it says "later".
const TRANSFER_POLLS: u32 = 3;
const TRANSFER_POLL_INTERVAL: Duration = Duration::from_millis(500);
const SESSIONS_NOTE: &str = "Google has no API that lists a user's web sessions: the proof is the 204 of POST /admin/directory/v1/users/{userKey}/signOut made by this connector and an empty OAuth token list; a suspended user cannot sign in";

#[derive(Clone, Debug)]
struct Settings {
    base_url: Url,
    token_url: Url,
    customer: String,
    drive_application_id: Option<String>,
    page_size: u64,
    timeout: Duration,
    secret: String,
}

impl Settings {
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut s = http::Settings::new(system, "google", config, KEYS);
        let base_url = s.url("base_url", Some(DEFAULT_BASE_URL), DEFAULT_BASE_URL);
        let token_url = s.url("token_url", Some(DEFAULT_TOKEN_URL), DEFAULT_TOKEN_URL);
        let customer = s
            .text(
                "customer",
                Some("my_customer"),
                "the Workspace customer id, e.g. \"C01abc23d\" (default \"my_customer\")",
            )
            .unwrap_or_else(|| "my_customer".into());
        let drive_application_id = match config.connection.get("drive_application_id") {
            None => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => Some(n.to_string()),
            Some(Value::String(text))
                if !text.trim().is_empty() && text.trim().bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(text.trim().to_string())
            }
            Some(other) => {
                s.problems.push(format!(
                    "{} = {other} must be the numeric Data Transfer application id of Drive and Docs (GET /admin/datatransfer/v1/applications lists them)",
                    s.key("drive_application_id")
                ));
                None
            }
        };
        let page_size = s.number("page_size", MAX_PAGE_SIZE, MAX_PAGE_SIZE);
        let timeout = s.number("timeout_secs", 30, 600);
        let secret = s.secret(&format!(
            "fields \"{CLIENT_EMAIL}\", \"{PRIVATE_KEY}\" (PEM) and \"{SUBJECT}\" (the admin to impersonate) hold the service account's key"
        ));
        match (base_url, token_url, secret) {
            (Some(base_url), Some(token_url), Some(secret)) if s.problems.is_empty() => {
                Ok(Settings {
                    base_url,
                    token_url,
                    customer,
                    drive_application_id,
                    page_size,
                    timeout: Duration::from_secs(timeout),
                    secret,
                })
            }
            _ => Err(s.problems),
        }
    }
}

/// The service account's credentials from the secret.
struct ServiceAccount {
    client_email: String,
    private_key: String,
    subject: String,
}

/// The DER of a PEM `PRIVATE KEY` (PKCS#8). Literal `\n` (a key pasted from the JSON key
/// file) are taken as line breaks.
fn pkcs8_der(pem: &str) -> Result<Vec<u8>, String> {
    let pem = pem.replace("\\n", "\n");
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        return Err("holds a PKCS#1 key (BEGIN RSA PRIVATE KEY); store the service account's PKCS#8 key (BEGIN PRIVATE KEY), e.g. `openssl pkcs8 -topk8 -nocrypt`".into());
    }
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let start = pem
        .find(begin)
        .ok_or("is not a PEM private key (no -----BEGIN PRIVATE KEY-----)")?;
    let body = &pem[start + begin.len()..];
    let stop = body
        .find(end)
        .ok_or("is not a PEM private key (no -----END PRIVATE KEY-----)")?;
    let text: String = body[..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "is not a PEM private key (its body is not base64)".to_string())
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signed JWT assertion of the JWT bearer grant.
/// <https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests>
fn assertion(
    account: &ServiceAccount,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let der = pkcs8_der(&account.private_key)?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|err| format!("is not an RSA PKCS#8 private key ({err})"))?;
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let iat = now.timestamp();
    let claims = json!({
        "iss": account.client_email,
        "sub": account.subject,
        "scope": SCOPES,
        "aud": audience,
        "iat": iat,
        "exp": iat + ASSERTION_TTL,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "could not sign with this key".to_string())?;
    Ok(format!("{input}.{}", b64url(&signature)))
}

/// `(reason, message)` of a Google API error body
/// (<https://developers.google.com/admin-sdk/directory/v1/guides/troubleshoot-error-codes>).
fn google_error(body: &Value) -> (String, String) {
    match body {
        Value::String(text) => (String::new(), format!(" ({text})")),
        _ => {
            let reason = body["error"]["errors"][0]["reason"]
                .as_str()
                .or(body["error"]["status"].as_str())
                .unwrap_or_default()
                .to_string();
            let message = body["error"]["message"]
                .as_str()
                .map(http::snippet)
                .unwrap_or_default();
            let detail = match (reason.is_empty(), message.is_empty()) {
                (false, false) => format!(" ({reason}: {message})"),
                (false, true) => format!(" ({reason})"),
                (true, false) => format!(" ({message})"),
                (true, true) => String::new(),
            };
            (reason, detail)
        }
    }
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
        // Google reports "never" as the epoch.
        .filter(|time| time.timestamp() > 0)
}

fn group_entitlement(group: &Value) -> Option<Entitlement> {
    let id = group["id"].as_str()?;
    let name = group["email"]
        .as_str()
        .or(group["name"].as_str())
        .unwrap_or(id);
    Some(Entitlement {
        id: id.to_string(),
        name: name.to_string(),
        kind: "group".into(),
    })
}

/// A revocation this connector made: `signOut` cannot be read back.
#[derive(Clone, Debug)]
struct Revocation {
    at: DateTime<Utc>,
    status: u16,
    tokens_deleted: usize,
}

pub struct GoogleConnector {
    system: String,
    settings: Settings,
    client: reqwest::Client,
    secrets: Arc<dyn SecretSource>,
    token: TokenCache,
    revoked: std::sync::Mutex<BTreeMap<String, Revocation>>,
}

impl std::fmt::Debug for GoogleConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleConnector")
            .field("system", &self.system)
            .field("base_url", &self.settings.base_url.as_str())
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl GoogleConnector {
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
        Ok(GoogleConnector {
            system: system.to_string(),
            settings,
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

    fn fields(&self) -> String {
        format!(
            "secret \"{}\" fields \"{CLIENT_EMAIL}\", \"{PRIVATE_KEY}\" and \"{SUBJECT}\"",
            self.settings.secret
        )
    }

    async fn service_account(&self) -> Result<ServiceAccount, ConnectorError> {
        let what = "its Google service account key";
        let secret = self
            .secrets
            .secret(&self.settings.secret)
            .await
            .map_err(|err| http::secret_error(&self.system, what, &err))?;
        let mut values = Vec::new();
        for field in [CLIENT_EMAIL, PRIVATE_KEY, SUBJECT] {
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
        let subject = values.pop().unwrap_or_default();
        let private_key = values.pop().unwrap_or_default();
        let client_email = values.pop().unwrap_or_default();
        Ok(ServiceAccount {
            client_email,
            private_key,
            subject,
        })
    }

    /// `POST {token_url}` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`.
    /// <https://developers.google.com/identity/protocols/oauth2/service-account#makingrequest>
    async fn fetch_token(&self) -> Result<(String, Duration), ConnectorError> {
        let account = self.service_account().await?;
        let jwt =
            assertion(&account, self.settings.token_url.as_str(), Utc::now()).map_err(|why| {
                ConnectorError::InvalidConfig(format!(
                    "system \"{}\": field \"{PRIVATE_KEY}\" of secret \"{}\" {why}",
                    self.system, self.settings.secret
                ))
            })?;
        let request = format!("POST {}", self.settings.token_url.path());
        let builder = self
            .client
            .post(self.settings.token_url.clone())
            .header(ACCEPT, "application/json")
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", jwt.as_str()),
            ]);
        let raw = http::exchange(builder, &self.system, &request, |status| status == 200)
            .await
            .map_err(|err| http::redact(http::redact(err, &jwt), &account.private_key))?;
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
            .map(http::snippet)
            .unwrap_or_default();
        let err = match (raw.status, code) {
            (400 | 401 | 403, "invalid_grant" | "invalid_client" | "unauthorized_client" | "access_denied") => {
                ConnectorError::Unauthorized(format!(
                    "Google refused the service account of system \"{}\" from {} (HTTP {}, {code}: {description}); check the key is current, the subject is an admin of the domain, and the client id has domain-wide delegation of the scopes {SCOPES}",
                    self.system, self.fields(), raw.status
                ))
            }
            (400, "invalid_scope") => ConnectorError::Unauthorized(format!(
                "system \"{}\": Google refused the scopes {SCOPES} for the service account from {} ({description}); grant them in the domain-wide delegation",
                self.system, self.fields()
            )),
            (status, _) => http::status_kind(
                status,
                http::retry_delay(&raw.headers, None, Utc::now()),
                format!(
                    "system \"{}\": {request} answered HTTP {status} ({code}: {description})",
                    self.system
                ),
            ),
        };
        Err(http::redact(http::redact(err, &jwt), &account.private_key))
    }

    /// Sends one request with the bearer token (fetched again once on a 401).
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

    /// Google's refusal of a request, by status and reason.
    fn refused(&self, raw: &Raw, request: &str) -> ConnectorError {
        let (reason, detail) = google_error(&raw.body);
        let system = &self.system;
        let delay = http::retry_delay(&raw.headers, None, Utc::now());
        match (raw.status, reason.as_str()) {
            (401, _) => ConnectorError::Unauthorized(format!(
                "Google refused the access token of system \"{system}\" obtained with the service account from {} (HTTP 401{detail}); check that secret and the domain-wide delegation",
                self.fields()
            )),
            // Google answers most rate limits with 403.
            // https://developers.google.com/admin-sdk/directory/v1/limits
            (403, "userRateLimitExceeded" | "rateLimitExceeded") => ConnectorError::Throttled {
                retry_after: delay,
                message: format!("system \"{system}\": {request} answered HTTP 403{detail}"),
            },
            (403, _) => ConnectorError::Unauthorized(format!(
                "Google refused {request} to the service account of system \"{system}\" from {} (HTTP 403{detail}); the subject must be an admin allowed to manage users and groups, and the client id needs domain-wide delegation of {SCOPES}",
                self.fields()
            )),
            (status, _) => http::status_kind(
                status,
                delay,
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
        let request = describe(&method, segments);
        let mut url = http::join(&self.settings.base_url, segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.send(method, url, &request, body, pass).await
    }

    /// Every item of `field` over the pages of a listing, following `nextPageToken`.
    /// `None` when the first page is 404.
    async fn list(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        field: &str,
    ) -> Result<Option<Vec<Value>>, ConnectorError> {
        let request = describe(&Method::GET, segments);
        let max = self.settings.page_size.to_string();
        let mut items = Vec::new();
        let mut page_token: Option<String> = None;
        for page in 0..http::MAX_PAGES {
            let mut url = http::join(&self.settings.base_url, segments);
            url.query_pairs_mut()
                .extend_pairs(query)
                .append_pair("maxResults", &max);
            if let Some(token) = &page_token {
                url.query_pairs_mut().append_pair("pageToken", token);
            }
            let pass: &[u16] = if page == 0 { &[404] } else { &[] };
            let raw = self.send(Method::GET, url, &request, None, pass).await?;
            if raw.status == 404 {
                return Ok(None);
            }
            match &raw.body[field] {
                Value::Array(values) => items.extend(values.iter().cloned()),
                // Google leaves out an empty list.
                Value::Null => {}
                _ => {
                    return Err(ConnectorError::Permanent(format!(
                        "system \"{}\": {request} answered a \"{field}\" that is not an array",
                        self.system
                    )))
                }
            }
            match raw.body["nextPageToken"].as_str() {
                Some(token) if !token.is_empty() => page_token = Some(token.to_string()),
                _ => return Ok(Some(items)),
            }
        }
        Err(ConnectorError::Permanent(format!(
            "system \"{}\": {request} did not end after {} pages",
            self.system,
            http::MAX_PAGES
        )))
    }

    /// `GET /admin/directory/v1/users/{userKey}`; `None` when there is no such user.
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/users/get>
    async fn user(&self, key: &str) -> Result<Option<Value>, ConnectorError> {
        let raw = self
            .call(Method::GET, &user_path(key), &[], None, &[404])
            .await?;
        Ok((raw.status != 404).then_some(raw.body))
    }

    /// The groups the user is a direct member of.
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/groups/list>
    async fn groups(&self, key: &str) -> Result<Option<Vec<Entitlement>>, ConnectorError> {
        Ok(self
            .list(
                &["admin", "directory", "v1", "groups"],
                &[("userKey", key)],
                "groups",
            )
            .await?
            .map(|groups| groups.iter().filter_map(group_entitlement).collect()))
    }

    /// The OAuth tokens the user granted to apps; `None` when the user is gone.
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/tokens/list>
    async fn tokens(&self, key: &str) -> Result<Option<Vec<String>>, ConnectorError> {
        let mut segments = user_path(key);
        segments.push("tokens");
        let raw = self.call(Method::GET, &segments, &[], None, &[404]).await?;
        if raw.status == 404 {
            return Ok(None);
        }
        Ok(Some(
            raw.body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|token| token["clientId"].as_str().map(str::to_string))
                .collect(),
        ))
    }

    fn account(&self, user: &Value, mut entitlements: Vec<Entitlement>) -> Option<Account> {
        let id = user["id"].as_str()?;
        entitlements.sort();
        entitlements.dedup();
        let email = user["primaryEmail"].as_str();
        Some(Account {
            system: self.system.clone(),
            id: id.to_string(),
            username: email.unwrap_or(id).to_string(),
            email: email.map(str::to_string),
            active: user["suspended"].as_bool() != Some(true)
                && user["archived"].as_bool() != Some(true),
            entitlements,
            credentials: Vec::new(),
            last_activity: time(&user["lastLoginTime"]),
        })
    }

    fn revocation(&self, key: &str) -> Option<Revocation> {
        self.revoked
            .lock()
            .ok()
            .and_then(|revoked| revoked.get(key).cloned())
    }

    /// `POST …/users/{userKey}/signOut`, then `DELETE …/tokens/{clientId}` for each token.
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/users/signOut>
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/tokens/delete>
    async fn revoke_sessions(&self, key: &str) -> Result<Applied, ConnectorError> {
        let Some(tokens) = self.tokens(key).await? else {
            return Ok(Applied::AlreadyDone);
        };
        if tokens.is_empty() && self.revocation(key).is_some() {
            return Ok(Applied::AlreadyDone);
        }
        let at = Utc::now();
        let mut segments = user_path(key);
        segments.push("signOut");
        let raw = self
            .call(Method::POST, &segments, &[], None, &[404])
            .await?;
        if raw.status == 404 {
            return Ok(Applied::AlreadyDone);
        }
        let status = raw.status;
        for client_id in &tokens {
            let mut segments = user_path(key);
            segments.extend(["tokens", client_id.as_str()]);
            self.call(Method::DELETE, &segments, &[], None, &[404])
                .await?;
        }
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.insert(
                key.to_string(),
                Revocation {
                    at,
                    status,
                    tokens_deleted: tokens.len(),
                },
            );
        }
        Ok(Applied::Changed)
    }

    /// `PUT /admin/directory/v1/users/{userKey}` with `{"suspended": true}` (or `false`, the
    /// restore of a rehire). A user that is gone is suspended already, and cannot come back.
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/users/update>
    async fn set_suspended(&self, key: &str, suspended: bool) -> Result<Applied, ConnectorError> {
        let gone = || {
            ConnectorError::NotFound(format!(
                "system \"{}\": user {key} no longer exists (undelete it within 20 days of deletion first), so it cannot be unsuspended",
                self.system
            ))
        };
        let Some(user) = self.user(key).await? else {
            return if suspended {
                Ok(Applied::AlreadyDone)
            } else {
                Err(gone())
            };
        };
        if (user["suspended"].as_bool() == Some(true)) == suspended {
            return Ok(Applied::AlreadyDone);
        }
        let body = json!({"suspended": suspended});
        let raw = self
            .call(Method::PUT, &user_path(key), &[], Some(&body), &[404])
            .await?;
        match raw.status {
            404 if !suspended => Err(gone()),
            404 => Ok(Applied::AlreadyDone),
            _ => Ok(Applied::Changed),
        }
    }

    /// `POST /admin/directory/v1/groups/{groupKey}/members` with the user as a MEMBER: the
    /// restore of a removed membership (409 `duplicate` means it is there already).
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/members/insert>
    async fn add_member(&self, group: &str, key: &str) -> Result<Applied, ConnectorError> {
        if self.has_member(group, key).await? == Some(true) {
            return Ok(Applied::AlreadyDone);
        }
        let body = json!({"id": key, "role": "MEMBER"});
        let raw = self
            .call(
                Method::POST,
                &["admin", "directory", "v1", "groups", group, "members"],
                &[],
                Some(&body),
                &[404, 409],
            )
            .await?;
        match raw.status {
            409 => Ok(Applied::AlreadyDone),
            404 => Err(ConnectorError::NotFound(format!(
                "system \"{}\": group {group} or user {key} no longer exists, so the membership cannot be restored",
                self.system
            ))),
            _ => Ok(Applied::Changed),
        }
    }

    /// `DELETE /admin/directory/v1/groups/{groupKey}/members/{memberKey}`
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/members/delete>
    async fn remove_member(&self, group: &str, key: &str) -> Result<Applied, ConnectorError> {
        let raw = self
            .call(
                Method::DELETE,
                &["admin", "directory", "v1", "groups", group, "members", key],
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

    /// `GET /admin/directory/v1/groups/{groupKey}/hasMember/{memberKey}`; `None` when the
    /// group or the user is gone.
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/members/hasMember>
    async fn has_member(&self, group: &str, key: &str) -> Result<Option<bool>, ConnectorError> {
        let raw = self
            .call(
                Method::GET,
                &[
                    "admin",
                    "directory",
                    "v1",
                    "groups",
                    group,
                    "hasMember",
                    key,
                ],
                &[],
                None,
                &[404],
            )
            .await?;
        if raw.status == 404 {
            return Ok(None);
        }
        raw.body["isMember"].as_bool().map(Some).ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "system \"{}\": hasMember of group {group} answered without isMember",
                self.system
            ))
        })
    }

    /// `DELETE /admin/directory/v1/users/{userKey}`
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/users/delete>
    async fn delete(&self, key: &str) -> Result<Applied, ConnectorError> {
        let raw = self
            .call(Method::DELETE, &user_path(key), &[], None, &[404])
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    fn drive_application(&self) -> Result<&str, ConnectorError> {
        self.settings.drive_application_id.as_deref().ok_or_else(|| {
            ConnectorError::InvalidConfig(format!(
                "system \"{}\": handing data over needs systems.{}.connection.drive_application_id, the Data Transfer application id of Drive and Docs (GET /admin/datatransfer/v1/applications lists them)",
                self.system, self.system
            ))
        })
    }

    /// The manager's user id, from the task's target (their email).
    async fn new_owner(&self, task: &Task) -> Result<String, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} hands data over but names no recipient",
                task.task_id
            ))
        })?;
        let Some(user) = self.user(&target.id).await? else {
            return Err(ConnectorError::Permanent(format!(
                "system \"{}\": the recipient of the data, {}, has no account in this Workspace; name another manager",
                self.system, target.id
            )));
        };
        user["id"].as_str().map(str::to_string).ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "system \"{}\": the user {} has no id",
                self.system, target.id
            ))
        })
    }

    /// The transfers from `old` to `new`, newest last.
    /// <https://developers.google.com/admin-sdk/data-transfer/reference/rest/v1/transfers/list>
    async fn transfers(&self, old: &str, new: &str) -> Result<Vec<Value>, ConnectorError> {
        Ok(self
            .list(
                &["admin", "datatransfer", "v1", "transfers"],
                &[("oldOwnerUserId", old), ("newOwnerUserId", new)],
                "dataTransfers",
            )
            .await?
            .unwrap_or_default())
    }

    /// `POST /admin/datatransfer/v1/transfers`, unless one from this owner to that one is
    /// under way or done.
    /// <https://developers.google.com/admin-sdk/data-transfer/reference/rest/v1/transfers/insert>
    async fn transfer(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let application = self.drive_application()?.to_string();
        let old = task.account.id.as_str();
        if self.user(old).await?.is_none() {
            return Ok(Applied::AlreadyDone);
        }
        let new = self.new_owner(task).await?;
        let existing = self.transfers(old, &new).await?;
        if existing
            .iter()
            .any(|t| t["overallTransferStatusCode"].as_str() != Some("failed"))
        {
            return Ok(Applied::AlreadyDone);
        }
        let body = json!({
            "oldOwnerUserId": old,
            "newOwnerUserId": new,
            "applicationDataTransfers": [{
                // An int64, which Google's JSON carries as a string.
                "applicationId": application,
                "applicationTransferParams": [{"key": "PRIVACY_LEVEL", "value": ["PRIVATE", "SHARED"]}],
            }],
        });
        self.call(
            Method::POST,
            &["admin", "datatransfer", "v1", "transfers"],
            &[],
            Some(&body),
            &[],
        )
        .await?;
        Ok(Applied::Changed)
    }

    async fn transfer_evidence(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let old = task.account.id.as_str();
        if self.user(old).await?.is_none() {
            return Ok(Evidence {
                verified: true,
                observed: json!({
                    "request": describe(&Method::GET, &user_path(old)),
                    "status": 404,
                    "note": "the user no longer exists: nothing is left to hand over",
                }),
            });
        }
        let new = self.new_owner(task).await?;
        let existing = self.transfers(old, &new).await?;
        let Some(latest) = existing
            .iter()
            .rev()
            .find(|t| t["overallTransferStatusCode"].as_str() != Some("failed"))
            .or(existing.last())
        else {
            return Ok(Evidence {
                verified: false,
                observed: json!({
                    "request": format!("GET /admin/datatransfer/v1/transfers?oldOwnerUserId={old}&newOwnerUserId={new}"),
                    "status": 200,
                    "transfers": 0,
                }),
            });
        };
        let id = latest["id"].as_str().unwrap_or_default().to_string();
        let segments = ["admin", "datatransfer", "v1", "transfers", id.as_str()];
        let mut status = String::new();
        for poll in 0..TRANSFER_POLLS {
            if poll > 0 {
                tokio::time::sleep(TRANSFER_POLL_INTERVAL).await;
            }
            let raw = self.call(Method::GET, &segments, &[], None, &[]).await?;
            status = raw.body["overallTransferStatusCode"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if status == "completed" || status == "failed" {
                return Ok(Evidence {
                    verified: status == "completed",
                    observed: json!({
                        "request": describe(&Method::GET, &segments),
                        "status": 200,
                        "transfer": id,
                        "oldOwnerUserId": old,
                        "newOwnerUserId": new,
                        "overallTransferStatusCode": status,
                        "requestTime": raw.body["requestTime"],
                    }),
                });
            }
        }
        Err(ConnectorError::Transient(format!(
            "system \"{}\": data transfer {id} from user {old} to {new} is still \"{status}\"; it is read again later",
            self.system
        )))
    }

    async fn evidence(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let key = task.account.id.as_str();
        let user_request = describe(&Method::GET, &user_path(key));
        let restoring = task.stage() == StageKind::Restore;
        let gone = |request: String| Evidence {
            // Gone proves a removal, never a restore.
            verified: !restoring,
            observed: json!({"request": request, "status": 404, "note": "the user no longer exists"}),
        };
        match task.action {
            Action::RevokeSessions => {
                let mut segments = user_path(key);
                segments.push("tokens");
                let request = describe(&Method::GET, &segments);
                let Some(tokens) = self.tokens(key).await? else {
                    return Ok(gone(request));
                };
                let suspended = match self.user(key).await? {
                    None => return Ok(gone(user_request)),
                    Some(user) => user["suspended"].as_bool() == Some(true),
                };
                let revocation = self.revocation(key);
                Ok(Evidence {
                    verified: tokens.is_empty() && (revocation.is_some() || suspended),
                    observed: json!({
                        "signOut": revocation.map(|done| json!({
                            "request": format!("POST /admin/directory/v1/users/{key}/signOut"),
                            "status": done.status,
                            "at": done.at.to_rfc3339(),
                            "tokens_deleted": done.tokens_deleted,
                        })),
                        "request": request,
                        "tokens": tokens,
                        "suspended": suspended,
                        "note": SESSIONS_NOTE,
                    }),
                })
            }
            Action::Disable | Action::Delete | Action::Enable => {
                let Some(user) = self.user(key).await? else {
                    return Ok(gone(user_request));
                };
                let suspended = user["suspended"].as_bool() == Some(true);
                Ok(Evidence {
                    verified: match task.action {
                        Action::Disable => suspended,
                        Action::Enable => !suspended,
                        _ => false,
                    },
                    observed: json!({"request": user_request, "status": 200, "suspended": suspended}),
                })
            }
            Action::RemoveEntitlement | Action::RestoreEntitlement => {
                let group = target_group(task)?;
                let request = describe(
                    &Method::GET,
                    &[
                        "admin",
                        "directory",
                        "v1",
                        "groups",
                        group,
                        "hasMember",
                        key,
                    ],
                );
                let member = self.has_member(group, key).await?;
                Ok(Evidence {
                    verified: (member == Some(true)) == restoring,
                    observed: json!({
                        "request": request,
                        "status": if member.is_some() { 200 } else { 404 },
                        "group": group,
                        "isMember": member.unwrap_or(false),
                    }),
                })
            }
            Action::TransferData => self.transfer_evidence(task).await,
            other => Err(ConnectorError::Unsupported(format!(
                "verify {} (the Google Workspace connector has no such operation)",
                other.as_str().replace('_', " ")
            ))),
        }
    }
}

fn user_path(key: &str) -> Vec<&str> {
    vec!["admin", "directory", "v1", "users", key]
}

fn target_group(task: &Task) -> Result<&str, ConnectorError> {
    let target = task.target.as_ref().ok_or_else(|| {
        ConnectorError::Permanent(format!(
            "task {} acts on an entitlement but names no target group",
            task.task_id
        ))
    })?;
    match target.kind.as_str() {
        "group" => Ok(&target.id),
        other => Err(ConnectorError::Unsupported(format!(
            "act on a \"{other}\" entitlement (Google groups only)"
        ))),
    }
}

const SUPPORTS: &[StageKind] = &[
    StageKind::Sessions,
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Data,
    StageKind::Delete,
    StageKind::Restore,
];

#[async_trait]
impl Connector for GoogleConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    /// `GET /admin/directory/v1/users/{email}` (a primary address or an alias), then the
    /// user's groups.
    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("google.discover", system = %self.system, person_id = %person.person_id);
        async {
            let mut keys = vec![person.email.as_str()];
            if let Some(username) = person.username.as_deref() {
                if username.contains('@') && !username.eq_ignore_ascii_case(&person.email) {
                    keys.push(username);
                }
            }
            let mut accounts: Vec<Account> = Vec::new();
            for key in keys {
                let Some(user) = self.user(key).await? else {
                    continue;
                };
                let Some(id) = user["id"].as_str() else {
                    continue;
                };
                if accounts.iter().any(|a| a.id == id) {
                    continue;
                }
                let groups = self.groups(id).await?.unwrap_or_default();
                accounts.extend(self.account(&user, groups));
            }
            Ok(accounts)
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("google.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let key = task.account.id.as_str();
            let applied = match task.action {
                Action::RevokeSessions => self.revoke_sessions(key).await,
                Action::Disable => self.set_suspended(key, true).await,
                Action::Enable => self.set_suspended(key, false).await,
                Action::RemoveEntitlement => self.remove_member(target_group(task)?, key).await,
                Action::RestoreEntitlement => self.add_member(target_group(task)?, key).await,
                Action::TransferData => self.transfer(task).await,
                Action::Delete => self.delete(key).await,
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (the Google Workspace connector has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "google apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("google.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        self.evidence(task).instrument(span).await
    }

    /// `GET /admin/directory/v1/users?customer=…` with `lastLoginTime`.
    /// <https://developers.google.com/admin-sdk/directory/reference/rest/v1/users/list>
    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let users = self
            .list(
                &["admin", "directory", "v1", "users"],
                &[("customer", self.settings.customer.as_str())],
                "users",
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
        crate::test_config("google", connection, secret)
    }

    #[test]
    fn settings_are_checked() {
        let ok = config(json!({"drive_application_id": 55656082996u64}), Some("s"));
        let settings = Settings::parse("gws", &ok).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(settings.base_url.as_str(), "https://admin.googleapis.com/");
        assert_eq!(
            settings.token_url.as_str(),
            "https://oauth2.googleapis.com/token"
        );
        assert_eq!(settings.customer, "my_customer");
        assert_eq!(
            settings.drive_application_id.as_deref(),
            Some("55656082996")
        );
        let all = GoogleConnector::check_config(
            "gws",
            &config(
                json!({"drive_application_id": "drive", "domain": "x", "page_size": 900}),
                None,
            ),
        )
        .join("\n");
        for needle in [
            "systems.gws.connection.domain is not a google setting",
            "systems.gws.connection.drive_application_id = \"drive\" must be the numeric",
            "systems.gws.connection.page_size = 900 must be a whole number from 1 to 200",
            "systems.gws.secret is required",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
    }

    #[test]
    fn keys_must_be_pkcs8_pem() {
        assert!(
            pkcs8_der("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----")
                .unwrap_err()
                .contains("PKCS#1")
        );
        assert!(pkcs8_der("not a key").is_err());
        assert_eq!(
            pkcs8_der("-----BEGIN PRIVATE KEY-----\\nAAEC\\n-----END PRIVATE KEY-----\\n"),
            Ok(vec![0, 1, 2])
        );
        let account = ServiceAccount {
            client_email: "sa@p.iam.gserviceaccount.com".into(),
            private_key: "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----".into(),
            subject: "admin@example.com".into(),
        };
        assert!(assertion(&account, DEFAULT_TOKEN_URL, Utc::now())
            .unwrap_err()
            .contains("not an RSA PKCS#8 private key"));
    }

    #[test]
    fn errors_are_read() {
        let body = json!({"error": {"code": 403, "message": "Quota exceeded", "errors": [
            {"domain": "usageLimits", "reason": "userRateLimitExceeded", "message": "Quota exceeded"}
        ]}});
        assert_eq!(google_error(&body).0, "userRateLimitExceeded");
        assert_eq!(time(&json!("1970-01-01T00:00:00.000Z")), None);
        assert!(time(&json!("2026-11-01T09:00:00.000Z")).is_some());
    }
}
