//! A mock GitHub organization (REST API 2022-11-28) on wiremock, following
//! <https://docs.github.com/en/rest>:
//! - `Authorization: Bearer <token>` (or `token <token>`), `X-GitHub-Api-Version` checked when
//!   sent (<https://docs.github.com/en/rest/about-the-rest-api/api-versions>), 401
//!   `Bad credentials`;
//! - `x-ratelimit-*` headers on every answer, and the primary rate limit as 403 with
//!   `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (epoch seconds), or a secondary rate
//!   limit as 429 with `retry-after`
//!   (<https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>);
//! - `per_page` / `page` pagination with `Link` headers
//!   (<https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api>);
//! - org members, teams and team memberships, and SAML SSO credential authorizations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use serde_json::{json, Value};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::{header, query, Faults};

#[derive(Clone, Debug)]
struct Team {
    id: u64,
    slug: String,
    name: String,
    members: BTreeSet<String>,
}

#[derive(Clone, Debug)]
pub struct Authorization {
    pub login: String,
    pub credential_id: u64,
    pub credential_type: String,
    pub title: String,
}

#[derive(Default)]
struct State {
    members: BTreeSet<String>,
    teams: BTreeMap<String, Team>,
    authorizations: BTreeMap<u64, Authorization>,
    /// Throttle as a secondary rate limit (429 + `retry-after`) instead of the primary one.
    secondary: Option<u64>,
    /// Seconds from now of `x-ratelimit-reset` when throttled.
    reset_in: i64,
    next_id: u64,
}

pub struct GitHubMock {
    pub server: MockServer,
    pub token: String,
    pub org: String,
    state: Arc<Mutex<State>>,
    faults: Arc<Faults>,
}

/// A GitHub error body.
fn error(status: u16, message: &str, docs: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "message": message,
        "documentation_url": docs,
        "status": status.to_string(),
    }))
}

fn not_found() -> ResponseTemplate {
    error(404, "Not Found", "https://docs.github.com/rest")
}

/// The `x-ratelimit-*` headers GitHub sends on every answer.
fn with_limits(response: ResponseTemplate, remaining: u32, reset: i64) -> ResponseTemplate {
    response
        .insert_header("x-ratelimit-limit", "5000")
        .insert_header("x-ratelimit-remaining", remaining.to_string().as_str())
        .insert_header("x-ratelimit-used", (5000 - remaining).to_string().as_str())
        .insert_header("x-ratelimit-reset", reset.to_string().as_str())
        .insert_header("x-ratelimit-resource", "core")
}

/// A page of `items` by `per_page` / `page`, with `Link` headers (`next`, `last`).
fn page(base: &str, request: &Request, items: Vec<Value>) -> ResponseTemplate {
    let per_page = query(request, "per_page")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let number = query(request, "page")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let pages = items.len().div_ceil(per_page).max(1);
    let chunk: Vec<Value> = items
        .into_iter()
        .skip((number - 1) * per_page)
        .take(per_page)
        .collect();
    let link = |n: usize| {
        let pairs: Vec<(String, String)> = request
            .url
            .query_pairs()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut url = match reqwest::Url::parse(&format!("{base}{}", request.url.path())) {
            Ok(url) => url,
            Err(_) => request.url.clone(),
        };
        url.query_pairs_mut()
            .extend_pairs(pairs)
            .append_pair("page", &n.to_string());
        url.to_string()
    };
    let mut response = ResponseTemplate::new(200).set_body_json(Value::Array(chunk));
    if number < pages {
        response = response.insert_header(
            "Link",
            format!(
                "<{}>; rel=\"next\", <{}>; rel=\"last\"",
                link(number + 1),
                link(pages)
            )
            .as_str(),
        );
    }
    response
}

fn team_json(base: &str, org: &str, team: &Team) -> Value {
    json!({
        "id": team.id,
        "node_id": format!("T_{}", team.id),
        "url": format!("{base}/organizations/1/team/{}", team.id),
        "html_url": format!("https://github.com/orgs/{org}/teams/{}", team.slug),
        "name": team.name,
        "slug": team.slug,
        "description": "",
        "privacy": "closed",
        "notification_setting": "notifications_enabled",
        "permission": "pull",
        "members_url": format!("{base}/organizations/1/team/{}/members{{/member}}", team.id),
        "repositories_url": format!("{base}/organizations/1/team/{}/repos", team.id),
        "parent": null,
    })
}

fn authorization_json(a: &Authorization) -> Value {
    let mut value = json!({
        "login": a.login,
        "credential_id": a.credential_id,
        "credential_type": a.credential_type,
        "credential_authorized_at": "2026-01-02T03:04:05Z",
        "credential_accessed_at": "2026-11-01T09:00:00Z",
        "authorized_credential_id": a.credential_id + 1000,
        "authorized_credential_title": a.title,
        "authorized_credential_note": null,
        "authorized_credential_expires_at": null,
    });
    if a.credential_type == "personal access token" {
        value["token_last_eight"] = json!("71c3fc11");
        value["scopes"] = json!(["repo", "read:org"]);
    } else {
        value["fingerprint"] = json!("jklmnop12345678");
    }
    value
}

impl GitHubMock {
    pub async fn start(token: &str, org: &str) -> GitHubMock {
        let mock = GitHubMock {
            server: MockServer::start().await,
            token: token.into(),
            org: org.into(),
            state: Arc::new(Mutex::new(State {
                reset_in: 1,
                next_id: 100,
                ..State::default()
            })),
            faults: Arc::new(Faults::default()),
        };
        mock.mount().await;
        mock
    }

    pub fn base_url(&self) -> String {
        self.server.uri()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` requests hit the primary rate limit.
    pub fn throttle_next(&self, n: u32) {
        self.faults.throttle_next(n);
    }

    /// Throttled answers carry `x-ratelimit-reset` this many seconds ahead (default 1).
    pub fn set_reset_in(&self, secs: i64) {
        self.lock().reset_in = secs;
    }

    /// Throttle as a secondary rate limit: 429 with `retry-after: secs`.
    pub fn throttle_secondary(&self, secs: u64) {
        self.lock().secondary = Some(secs);
    }

    pub fn fail_next(&self, n: u32) {
        self.faults.fail_next(n);
    }

    pub fn add_member(&self, login: &str) {
        self.lock().members.insert(login.into());
    }

    pub fn add_team(&self, name: &str, members: &[&str]) -> String {
        let mut state = self.lock();
        state.next_id += 1;
        let slug = name.to_lowercase().replace(' ', "-");
        let team = Team {
            id: state.next_id,
            slug: slug.clone(),
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        state.teams.insert(slug.clone(), team);
        slug
    }

    /// A credential of `login` authorized for the org's SAML SSO; returns its id.
    pub fn add_authorization(&self, login: &str, credential_type: &str, title: &str) -> u64 {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.authorizations.insert(
            id,
            Authorization {
                login: login.into(),
                credential_id: id,
                credential_type: credential_type.into(),
                title: title.into(),
            },
        );
        id
    }

    pub fn is_member(&self, login: &str) -> bool {
        self.lock().members.contains(login)
    }

    pub fn in_team(&self, slug: &str, login: &str) -> bool {
        self.lock()
            .teams
            .get(slug)
            .is_some_and(|t| t.members.contains(login))
    }

    pub fn authorizations(&self, login: &str) -> usize {
        self.lock()
            .authorizations
            .values()
            .filter(|a| a.login == login)
            .count()
    }

    /// Removes a member from the org behind the connector's back: GitHub removes their team
    /// memberships and credential authorizations with it.
    pub fn remove_member(&self, login: &str) {
        remove(&mut self.lock(), login);
    }

    async fn mount(&self) {
        let state = self.state.clone();
        let faults = self.faults.clone();
        let token = self.token.clone();
        let org = self.org.clone();
        let base = self.base_url();
        Mock::given(any())
            .respond_with(move |request: &Request| {
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Utc::now().timestamp();
                let reset = now + state.reset_in;
                // https://docs.github.com/en/rest/authentication/authenticating-to-the-rest-api
                let auth = header(request, "authorization").unwrap_or_default();
                if auth != format!("Bearer {token}") && auth != format!("token {token}") {
                    return with_limits(
                        error(401, "Bad credentials", "https://docs.github.com/rest"),
                        59,
                        reset,
                    );
                }
                // https://docs.github.com/en/rest/about-the-rest-api/api-versions
                if let Some(version) = header(request, "x-github-api-version") {
                    if version != "2022-11-28" {
                        return error(
                            400,
                            &format!("Unsupported 'X-GitHub-Api-Version': {version}"),
                            "https://docs.github.com/rest/overview/api-versions",
                        );
                    }
                }
                if faults.take_throttle() {
                    // https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#exceeding-the-rate-limit
                    return match state.secondary {
                        Some(secs) => with_limits(
                            error(
                                429,
                                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                                "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                            ),
                            4000,
                            reset,
                        )
                        .insert_header("retry-after", secs.to_string().as_str()),
                        None => with_limits(
                            error(
                                403,
                                "API rate limit exceeded for installation ID 1.",
                                "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-primary-rate-limits",
                            ),
                            0,
                            reset,
                        ),
                    };
                }
                if faults.take_fail() {
                    return with_limits(ResponseTemplate::new(502).set_body_string("Server Error"), 4000, reset);
                }
                let segments: Vec<String> = request
                    .url
                    .path_segments()
                    .map(|s| s.map(str::to_string).collect())
                    .unwrap_or_default();
                let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
                with_limits(route(&mut state, request, &seg, &org, &base), 4000, reset)
            })
            .mount(&self.server)
            .await;
    }
}

fn remove(state: &mut State, login: &str) {
    state.members.remove(login);
    for team in state.teams.values_mut() {
        team.members.remove(login);
    }
    state.authorizations.retain(|_, a| a.login != login);
}

fn route(
    state: &mut State,
    request: &Request,
    seg: &[&str],
    org: &str,
    base: &str,
) -> ResponseTemplate {
    let method = request.method.as_str();
    let ["orgs", named, rest @ ..] = seg else {
        return not_found();
    };
    if *named != org {
        return not_found();
    }
    match (method, rest) {
        // https://docs.github.com/en/rest/orgs/members#list-organization-members
        ("GET", ["members"]) => {
            let items = state
                .members
                .iter()
                .map(|login| json!({"login": login, "id": login.len(), "type": "User", "site_admin": false}))
                .collect();
            page(base, request, items)
        }
        // https://docs.github.com/en/rest/orgs/members#check-organization-membership-for-a-user
        // (answers 302 to public_members for a requester outside the org; not modelled)
        ("GET", ["members", login]) => {
            if state.members.contains(*login) {
                ResponseTemplate::new(204)
            } else {
                not_found()
            }
        }
        // https://docs.github.com/en/rest/orgs/members#get-organization-membership-for-a-user
        ("GET", ["memberships", login]) => {
            if state.members.contains(*login) {
                ResponseTemplate::new(200).set_body_json(json!({
                    "state": "active",
                    "role": "member",
                    "organization": {"login": org},
                    "user": {"login": login},
                }))
            } else {
                not_found()
            }
        }
        // https://docs.github.com/en/rest/orgs/members#remove-an-organization-member
        // https://docs.github.com/en/rest/orgs/members#remove-organization-membership-for-a-user
        ("DELETE", ["members", login]) | ("DELETE", ["memberships", login]) => {
            if !state.members.contains(*login) {
                return not_found();
            }
            remove(state, login);
            ResponseTemplate::new(204)
        }
        // https://docs.github.com/en/rest/teams/teams#list-teams
        ("GET", ["teams"]) => {
            let items = state
                .teams
                .values()
                .map(|team| team_json(base, org, team))
                .collect();
            page(base, request, items)
        }
        // https://docs.github.com/en/rest/teams/members#get-team-membership-for-a-user
        ("GET", ["teams", slug, "memberships", login]) => match state.teams.get(*slug) {
            Some(team) if team.members.contains(*login) => ResponseTemplate::new(200)
                .set_body_json(json!({
                    "url": format!("{base}/organizations/1/team/{}/memberships/{login}", team.id),
                    "role": "member",
                    "state": "active",
                })),
            _ => not_found(),
        },
        // https://docs.github.com/en/rest/teams/members#remove-team-membership-for-a-user
        ("DELETE", ["teams", slug, "memberships", login]) => match state.teams.get_mut(*slug) {
            Some(team) => {
                team.members.remove(*login);
                ResponseTemplate::new(204)
            }
            None => not_found(),
        },
        // https://docs.github.com/en/enterprise-cloud@latest/rest/orgs/orgs#list-saml-sso-authorizations-for-an-organization
        ("GET", ["credential-authorizations"]) => {
            let login = query(request, "login");
            let items = state
                .authorizations
                .values()
                .filter(|a| login.as_ref().is_none_or(|l| &a.login == l))
                .map(authorization_json)
                .collect();
            page(base, request, items)
        }
        // https://docs.github.com/en/enterprise-cloud@latest/rest/orgs/orgs#remove-a-saml-sso-authorization-for-an-organization
        ("DELETE", ["credential-authorizations", id]) => {
            match id
                .parse::<u64>()
                .ok()
                .and_then(|id| state.authorizations.remove(&id))
            {
                Some(_) => ResponseTemplate::new(204),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}
