//! GitHub connector (REST API 2022-11-28, one organization).
//!
//! Accounts are members of the organization, found by login: GitHub cannot search an
//! organization's members by email, so the event must name the person's GitHub login
//! (`person.usernames.<system>`). The account id is the login. Entitlements are the org's
//! teams the member belongs to; credentials are the SAML SSO credential authorizations of
//! the member (personal access tokens and SSH keys authorized for the org, GitHub
//! Enterprise Cloud).
//! - remove entitlement: `DELETE /orgs/{org}/teams/{team_slug}/memberships/{username}`;
//! - remove credential: `DELETE /orgs/{org}/credential-authorizations/{credential_id}`;
//! - delete: `DELETE /orgs/{org}/memberships/{username}` (removes the membership, with its teams
//!   and its access to the org's repositories; the personal account stays the person's).
//!
//! Policy settings (`[systems.<name>]`, `kind = "github"`): `secret` (field `token`: a
//! fine-grained or classic personal access token, or an installation token, with the
//! organization's members and administration write permission), and `connection` keys `org`
//! (required), `base_url` ("https://api.github.com"; `https://<host>/api/v3` for GitHub
//! Enterprise Server), `page_size` (100), `timeout_secs` (30).
//!
//! Rate limits: 403 or 429 with `x-ratelimit-remaining: 0` is `Throttled` until
//! `x-ratelimit-reset` (epoch seconds); a secondary rate limit's `retry-after` wins.
//! <https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Credential, Entitlement, Evidence, PersonQuery,
};
use reqwest::header::{ACCEPT, RETRY_AFTER};
use reqwest::{Method, Url};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::http::{self, describe, Raw, TokenCache};

const KEYS: &[&str] = &["base_url", "org", "page_size", "timeout_secs"];
const DEFAULT_BASE_URL: &str = "https://api.github.com";
const TOKEN_FIELD: &str = "token";
const API_VERSION: &str = "2022-11-28";
/// GitHub's largest `per_page`.
const MAX_PAGE_SIZE: u64 = 100;
const TOKEN_TTL: Duration = Duration::from_secs(300);
const RESET_HEADER: &str = "x-ratelimit-reset";
const REMAINING_HEADER: &str = "x-ratelimit-remaining";

#[derive(Clone, Debug)]
struct Settings {
    base_url: Url,
    org: String,
    page_size: u64,
    timeout: Duration,
    secret: String,
}

impl Settings {
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut s = http::Settings::new(system, "github", config, KEYS);
        let base_url = s.url("base_url", Some(DEFAULT_BASE_URL), DEFAULT_BASE_URL);
        let org = s.text("org", None, "the organization's login, e.g. \"acme-corp\"");
        if let Some(org) = &org {
            if org.contains('/') || org.contains(char::is_whitespace) {
                s.problems.push(format!(
                    "{} = \"{org}\" is not an organization login (letters, digits and hyphens)",
                    s.key("org")
                ));
            }
        }
        let page_size = s.number("page_size", MAX_PAGE_SIZE, MAX_PAGE_SIZE);
        let timeout = s.number("timeout_secs", 30, 600);
        let secret = s.secret(&format!(
            "field \"{TOKEN_FIELD}\" holds a GitHub token that may administer the organization's members"
        ));
        match (base_url, org, secret) {
            (Some(base_url), Some(org), Some(secret)) if s.problems.is_empty() => Ok(Settings {
                base_url,
                org,
                page_size,
                timeout: Duration::from_secs(timeout),
                secret,
            }),
            _ => Err(s.problems),
        }
    }
}

fn github_error(body: &Value) -> String {
    match body {
        Value::String(text) => format!(" ({text})"),
        _ => body["message"]
            .as_str()
            .map(|m| format!(" ({})", http::snippet(m)))
            .unwrap_or_default(),
    }
}

/// `personal access token`, `SSH key`, … → the credential kinds of deprov.
fn credential_kind(github: &str) -> String {
    match github {
        "personal access token" => "personal_access_token".into(),
        "SSH key" => "ssh_key".into(),
        other => other.to_lowercase().replace(' ', "_"),
    }
}

fn credential(authorization: &Value) -> Option<Credential> {
    let id = match &authorization["credential_id"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return None,
    };
    let kind = credential_kind(
        authorization["credential_type"]
            .as_str()
            .unwrap_or("credential"),
    );
    let name = authorization["authorized_credential_title"]
        .as_str()
        .or(authorization["authorized_credential_note"].as_str())
        .map(str::to_string)
        .or_else(|| {
            authorization["token_last_eight"]
                .as_str()
                .map(|last| format!("…{last}"))
        })
        .or_else(|| authorization["fingerprint"].as_str().map(str::to_string));
    Some(Credential { id, kind, name })
}

pub struct GitHubConnector {
    system: String,
    settings: Settings,
    client: reqwest::Client,
    secrets: Arc<dyn SecretSource>,
    token: TokenCache,
}

impl std::fmt::Debug for GitHubConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubConnector")
            .field("system", &self.system)
            .field("base_url", &self.settings.base_url.as_str())
            .field("org", &self.settings.org)
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl GitHubConnector {
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
        Ok(GitHubConnector {
            system: system.to_string(),
            settings,
            client,
            secrets,
            token: TokenCache::default(),
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    async fn api_token(&self) -> Result<String, ConnectorError> {
        self.token
            .get(|| async {
                let what = "its GitHub token";
                let secret = self
                    .secrets
                    .secret(&self.settings.secret)
                    .await
                    .map_err(|err| http::secret_error(&self.system, what, &err))?;
                let value = secret
                    .field(TOKEN_FIELD)
                    .map_err(|err| http::secret_error(&self.system, what, &err))?
                    .trim()
                    .to_string();
                if value.is_empty() {
                    return Err(ConnectorError::InvalidConfig(format!(
                        "system \"{}\": field \"{TOKEN_FIELD}\" of secret \"{}\" is empty; store the GitHub token there",
                        self.system, self.settings.secret
                    )));
                }
                Ok((value, TOKEN_TTL))
            })
            .await
    }

    fn org_path<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut segments = vec!["orgs", self.settings.org.as_str()];
        segments.extend_from_slice(rest);
        segments
    }

    /// Sends one request; 2xx and `pass` come back, the rest is mapped onto errors.
    async fn send(
        &self,
        method: Method,
        url: Url,
        request: &str,
        pass: &[u16],
    ) -> Result<Raw, ConnectorError> {
        let token = self.api_token().await?;
        let builder = self
            .client
            .request(method, url)
            .bearer_auth(&token)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION);
        tracing::debug!(system = %self.system, %request, "github request");
        let ok = |status: u16| (200..300).contains(&status) || pass.contains(&status);
        let raw = http::exchange(builder, &self.system, request, ok)
            .await
            .map_err(|err| http::redact(err, &token))?;
        if ok(raw.status) {
            return Ok(raw);
        }
        let (system, secret) = (&self.system, &self.settings.secret);
        let detail = github_error(&raw.body);
        let limited = matches!(raw.status, 403 | 429)
            && (raw.header(REMAINING_HEADER).as_deref() == Some("0")
                || raw.header(RETRY_AFTER.as_str()).is_some());
        let err = if limited {
            // https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#exceeding-the-rate-limit
            ConnectorError::Throttled {
                retry_after: http::retry_delay(&raw.headers, Some(RESET_HEADER), Utc::now()),
                message: format!(
                    "system \"{system}\": {request} answered HTTP {}{detail}",
                    raw.status
                ),
            }
        } else {
            match raw.status {
                401 => {
                    self.token.forget().await;
                    ConnectorError::Unauthorized(format!(
                        "GitHub refused the token of system \"{system}\" from secret \"{secret}\" field \"{TOKEN_FIELD}\" (HTTP 401{detail}); rotate that secret"
                    ))
                }
                403 => ConnectorError::Unauthorized(format!(
                    "GitHub refused {request} to the token of system \"{system}\" from secret \"{secret}\" field \"{TOKEN_FIELD}\" (HTTP 403{detail}); it needs the organization's members (write) and administration permissions, and SSO authorization for the org when SAML is enforced"
                )),
                status => http::status_kind(
                    status,
                    http::retry_delay(&raw.headers, Some(RESET_HEADER), Utc::now()),
                    format!("system \"{system}\": {request} answered HTTP {status}{detail}"),
                ),
            }
        };
        Err(http::redact(err, &token))
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        pass: &[u16],
    ) -> Result<Raw, ConnectorError> {
        let request = describe(&method, segments);
        let url = http::join(&self.settings.base_url, segments);
        self.send(method, url, &request, pass).await
    }

    /// Every item of a listing, following `Link: <…>; rel="next"`
    /// (<https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api>).
    /// `None` when the first page is 404.
    async fn list(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Option<Vec<Value>>, ConnectorError> {
        let request = describe(&Method::GET, segments);
        let per_page = self.settings.page_size.to_string();
        let mut url = http::join(&self.settings.base_url, segments);
        url.query_pairs_mut()
            .extend_pairs(query)
            .append_pair("per_page", &per_page);
        http::link_pages(
            &self.system,
            &self.settings.base_url,
            url,
            &request,
            |url, pass| self.send(Method::GET, url, &request, pass),
        )
        .await
    }

    /// `GET /orgs/{org}/memberships/{username}`: 200 with the membership (active, or a
    /// pending invitation, which is access about to happen), 404 none. Unlike
    /// `GET /orgs/{org}/members/{username}`, it never redirects to the public member list,
    /// so a private member is never mistaken for a non-member.
    /// <https://docs.github.com/en/rest/orgs/members#get-organization-membership-for-a-user>
    async fn is_member(&self, login: &str) -> Result<bool, ConnectorError> {
        let raw = self
            .call(Method::GET, &self.org_path(&["memberships", login]), &[404])
            .await?;
        Ok(raw.status == 200)
    }

    /// `GET /orgs/{org}/teams/{team_slug}/memberships/{username}`: the state, or `None`.
    /// <https://docs.github.com/en/rest/teams/members#get-team-membership-for-a-user>
    async fn team_membership(
        &self,
        slug: &str,
        login: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let raw = self
            .call(
                Method::GET,
                &self.org_path(&["teams", slug, "memberships", login]),
                &[404],
            )
            .await?;
        if raw.status == 404 {
            return Ok(None);
        }
        Ok(Some(
            raw.body["state"].as_str().unwrap_or("active").to_string(),
        ))
    }

    /// The org's teams the member belongs to (active or pending).
    /// <https://docs.github.com/en/rest/teams/teams#list-teams>
    async fn teams(&self, login: &str) -> Result<Vec<Entitlement>, ConnectorError> {
        let teams = self
            .list(&self.org_path(&["teams"]), &[])
            .await?
            .unwrap_or_default();
        let mut found = Vec::new();
        for team in teams {
            let Some(slug) = team["slug"].as_str() else {
                continue;
            };
            if self.team_membership(slug, login).await?.is_some() {
                found.push(Entitlement {
                    id: slug.to_string(),
                    name: team["name"].as_str().unwrap_or(slug).to_string(),
                    kind: "team".into(),
                });
            }
        }
        Ok(found)
    }

    /// The member's SAML SSO credential authorizations; none when the org has no SAML SSO.
    /// <https://docs.github.com/en/enterprise-cloud@latest/rest/orgs/orgs#list-saml-sso-authorizations-for-an-organization>
    async fn credentials(&self, login: &str) -> Result<Vec<Credential>, ConnectorError> {
        Ok(self
            .list(
                &self.org_path(&["credential-authorizations"]),
                &[("login", login)],
            )
            .await?
            .unwrap_or_default()
            .iter()
            .filter(|a| {
                a["login"]
                    .as_str()
                    .is_none_or(|l| l.eq_ignore_ascii_case(login))
            })
            .filter_map(credential)
            .collect())
    }

    fn target<'t>(&self, task: &'t Task, kind: &str) -> Result<&'t str, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!("task {} names no target {kind}", task.task_id))
        })?;
        Ok(&target.id)
    }

    /// `DELETE /orgs/{org}/teams/{team_slug}/memberships/{username}`
    /// <https://docs.github.com/en/rest/teams/members#remove-team-membership-for-a-user>
    async fn remove_team(&self, slug: &str, login: &str) -> Result<Applied, ConnectorError> {
        if self.team_membership(slug, login).await?.is_none() {
            return Ok(Applied::AlreadyDone);
        }
        let raw = self
            .call(
                Method::DELETE,
                &self.org_path(&["teams", slug, "memberships", login]),
                &[404],
            )
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    /// `DELETE /orgs/{org}/credential-authorizations/{credential_id}`
    /// <https://docs.github.com/en/enterprise-cloud@latest/rest/orgs/orgs#remove-a-saml-sso-authorization-for-an-organization>
    async fn remove_credential(&self, id: &str, login: &str) -> Result<Applied, ConnectorError> {
        if !self.credentials(login).await?.iter().any(|c| c.id == id) {
            return Ok(Applied::AlreadyDone);
        }
        let raw = self
            .call(
                Method::DELETE,
                &self.org_path(&["credential-authorizations", id]),
                &[404],
            )
            .await?;
        Ok(if raw.status == 404 {
            Applied::AlreadyDone
        } else {
            Applied::Changed
        })
    }

    /// `DELETE /orgs/{org}/memberships/{username}`: removes the membership, or cancels a
    /// pending invitation.
    /// <https://docs.github.com/en/rest/orgs/members#remove-organization-membership-for-a-user>
    async fn remove_member(&self, login: &str) -> Result<Applied, ConnectorError> {
        if !self.is_member(login).await? {
            return Ok(Applied::AlreadyDone);
        }
        let raw = self
            .call(
                Method::DELETE,
                &self.org_path(&["memberships", login]),
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
        let login = task.account.id.as_str();
        match task.action {
            Action::RemoveEntitlement => {
                let slug = self.target(task, "team")?;
                let segments = self.org_path(&["teams", slug, "memberships", login]);
                let state = self.team_membership(slug, login).await?;
                Ok(Evidence {
                    verified: state.is_none(),
                    observed: json!({
                        "request": describe(&Method::GET, &segments),
                        "status": if state.is_some() { 200 } else { 404 },
                        "team": slug,
                        "state": state,
                    }),
                })
            }
            Action::RemoveCredential => {
                let id = self.target(task, "credential")?;
                let remaining = self.credentials(login).await?;
                let present = remaining.iter().any(|c| c.id == id);
                Ok(Evidence {
                    verified: !present,
                    observed: json!({
                        "request": format!(
                            "GET /orgs/{}/credential-authorizations?login={login}",
                            self.settings.org
                        ),
                        "status": 200,
                        "credential_id": id,
                        "authorized": present,
                        "authorizations_left": remaining.len(),
                    }),
                })
            }
            Action::Delete => {
                let member = self.is_member(login).await?;
                Ok(Evidence {
                    verified: !member,
                    observed: json!({
                        "request": describe(&Method::GET, &self.org_path(&["members", login])),
                        "status": if member { 204 } else { 404 },
                        "member": member,
                    }),
                })
            }
            other => Err(ConnectorError::Unsupported(format!(
                "verify {} (the GitHub connector has no such operation)",
                other.as_str().replace('_', " ")
            ))),
        }
    }
}

const SUPPORTS: &[StageKind] = &[
    StageKind::Entitlements,
    StageKind::Credentials,
    StageKind::Delete,
];

#[async_trait]
impl Connector for GitHubConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    /// The member named by the event's GitHub login, with teams and SSO credentials.
    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("github.discover", system = %self.system, person_id = %person.person_id);
        async {
            let Some(login) = person
                .username
                .as_deref()
                .map(str::trim)
                .filter(|l| !l.is_empty())
            else {
                return Err(ConnectorError::InvalidConfig(format!(
                    "system \"{}\": GitHub cannot find an organization member by email; the event must name the person's GitHub login in person.usernames.{}",
                    self.system, self.system
                )));
            };
            if login.contains('/') {
                return Err(ConnectorError::InvalidConfig(format!(
                    "system \"{}\": \"{login}\" is not a GitHub login",
                    self.system
                )));
            }
            if !self.is_member(login).await? {
                return Ok(Vec::new());
            }
            let mut entitlements = self.teams(login).await?;
            entitlements.sort();
            let mut credentials = self.credentials(login).await?;
            credentials.sort();
            Ok(vec![Account {
                system: self.system.clone(),
                id: login.to_string(),
                username: login.to_string(),
                email: None,
                active: true,
                entitlements,
                credentials,
                last_activity: None,
            }])
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("github.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let login = task.account.id.as_str();
            let applied = match task.action {
                Action::RemoveEntitlement => {
                    self.remove_team(self.target(task, "team")?, login).await
                }
                Action::RemoveCredential => {
                    self.remove_credential(self.target(task, "credential")?, login)
                        .await
                }
                Action::Delete => self.remove_member(login).await,
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (the GitHub connector has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "github apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("github.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        self.evidence(task).instrument(span).await
    }

    /// `GET /orgs/{org}/members`
    /// <https://docs.github.com/en/rest/orgs/members#list-organization-members>
    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let members = self
            .list(&self.org_path(&["members"]), &[])
            .await?
            .unwrap_or_default();
        Ok(members
            .iter()
            .filter_map(|m| m["login"].as_str())
            .map(|login| Account {
                system: self.system.clone(),
                id: login.to_string(),
                username: login.to_string(),
                email: None,
                active: true,
                entitlements: Vec::new(),
                credentials: Vec::new(),
                last_activity: None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(connection: Value, secret: Option<&str>) -> SystemConfig {
        crate::test_config("github", connection, secret)
    }

    #[test]
    fn settings_are_checked() {
        let ok = config(json!({"org": "acme"}), Some("s"));
        let settings = Settings::parse("gh", &ok).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(settings.base_url.as_str(), "https://api.github.com/");
        assert_eq!(settings.page_size, 100);
        let all = GitHubConnector::check_config(
            "gh",
            &config(json!({"page_size": 500, "team": "x"}), None),
        )
        .join("\n");
        for needle in [
            "systems.gh.connection.team is not a github setting",
            "systems.gh.connection.org is required",
            "systems.gh.connection.page_size = 500 must be a whole number from 1 to 100",
            "systems.gh.secret is required",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
    }

    #[test]
    fn credential_authorizations_become_credentials() {
        let pat = credential(&json!({
            "login": "octocat", "credential_id": 161195, "credential_type": "personal access token",
            "token_last_eight": "71c3fc11", "authorized_credential_note": "ci",
        }));
        assert_eq!(
            pat,
            Some(Credential {
                id: "161195".into(),
                kind: "personal_access_token".into(),
                name: Some("ci".into()),
            })
        );
        let ssh = credential(
            &json!({"credential_id": 7, "credential_type": "SSH key", "fingerprint": "jklmnop12345678"}),
        );
        assert_eq!(ssh.map(|c| c.kind), Some("ssh_key".into()));
        assert_eq!(credential(&json!({"credential_type": "SSH key"})), None);
    }
}
