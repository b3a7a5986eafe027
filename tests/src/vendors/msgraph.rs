//! A mock Entra ID tenant behind Microsoft Graph v1.0 on wiremock, with its token endpoint,
//! following <https://learn.microsoft.com/en-us/graph/api/overview?view=graph-rest-1.0>:
//! OAuth 2.0 client credentials
//! (<https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow>),
//! `Authorization: Bearer`, Graph error bodies (`{"error": {"code", "message"}}`),
//! `$filter` / `$select` / `$top` with `@odata.nextLink` paging
//! (<https://learn.microsoft.com/en-us/graph/paging>), and 429 + `Retry-After`
//! (<https://learn.microsoft.com/en-us/graph/throttling>).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use serde_json::{json, Map, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::{header, query, Faults};

pub const TENANT: &str = "contoso.onmicrosoft.com";

#[derive(Clone, Debug)]
pub struct GraphUser {
    pub id: String,
    pub upn: String,
    pub mail: String,
    pub enabled: bool,
    pub licenses: BTreeSet<String>,
    pub valid_from: String,
    pub last_sign_in: Option<String>,
}

#[derive(Clone, Debug)]
struct Group {
    id: String,
    name: String,
    members: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    users: BTreeMap<String, GraphUser>,
    groups: BTreeMap<String, Group>,
    /// Access tokens issued and still valid.
    tokens: BTreeSet<String>,
    tokens_issued: u32,
}

pub struct GraphMock {
    pub server: MockServer,
    pub client_id: String,
    pub client_secret: String,
    state: Arc<Mutex<State>>,
    faults: Arc<Faults>,
}

fn graph_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    // https://learn.microsoft.com/en-us/graph/errors
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": format!("{:032x}", fastrand::u128(..)),
            }
        }
    }))
}

fn not_found(id: &str) -> ResponseTemplate {
    graph_error(
        404,
        "Request_ResourceNotFound",
        &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
    )
}

fn now() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn guid() -> String {
    let n = fastrand::u128(..);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn user_json(user: &GraphUser) -> Map<String, Value> {
    let licenses: Vec<Value> = user
        .licenses
        .iter()
        .map(|sku| json!({"disabledPlans": [], "skuId": sku}))
        .collect();
    let states: Vec<Value> = user
        .licenses
        .iter()
        .map(|sku| json!({"skuId": sku, "disabledPlans": [], "assignedByGroup": null, "state": "Active", "error": "None"}))
        .collect();
    let value = json!({
        "id": user.id,
        "userPrincipalName": user.upn,
        "mail": user.mail,
        "displayName": user.upn,
        "accountEnabled": user.enabled,
        "assignedLicenses": licenses,
        "licenseAssignmentStates": states,
        "signInSessionsValidFromDateTime": user.valid_from,
        "signInActivity": {"lastSignInDateTime": user.last_sign_in},
    });
    value.as_object().cloned().unwrap_or_default()
}

/// `$select`: only the properties asked for (Graph's default set otherwise, which has
/// neither `signInActivity` nor the license states).
fn project(request: &Request, object: Map<String, Value>) -> Value {
    let select = query(request, "$select");
    let keep: Vec<String> = match &select {
        Some(select) => select.split(',').map(|s| s.trim().to_string()).collect(),
        None => ["id", "userPrincipalName", "mail", "displayName"]
            .map(String::from)
            .to_vec(),
    };
    Value::Object(
        object
            .into_iter()
            .filter(|(key, _)| key == "id" || keep.contains(key))
            .collect(),
    )
}

/// `$filter` with `eq` clauses joined by `or` over `userPrincipalName` and `mail`, string
/// literals in single quotes with `''` for a quote
/// (<https://learn.microsoft.com/en-us/graph/filter-query-parameter>).
fn filter_matches(filter: &str, user: &GraphUser) -> Option<bool> {
    let mut rest = filter.trim();
    let mut any = false;
    loop {
        let (field, after) = rest.split_once(" eq '")?;
        // The literal ends at a quote that is not doubled.
        let mut value = String::new();
        let mut chars = after.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, n)| *n) == Some('\'') {
                    value.push('\'');
                    chars.next();
                } else {
                    end = Some(i + 1);
                    break;
                }
            } else {
                value.push(c);
            }
        }
        let actual = match field.trim() {
            "userPrincipalName" => &user.upn,
            "mail" => &user.mail,
            _ => return None,
        };
        any |= actual.eq_ignore_ascii_case(&value);
        let tail = after[end?..].trim();
        if tail.is_empty() {
            return Some(any);
        }
        rest = tail.strip_prefix("or ")?;
    }
}

/// A page of a collection with `@odata.nextLink` (`$skiptoken` is an opaque offset).
fn collection(base: &str, request: &Request, items: Vec<Value>) -> ResponseTemplate {
    let top = query(request, "$top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 999);
    let skip = query(request, "$skiptoken")
        .and_then(|t| t.strip_prefix("X'").and_then(|t| t.parse::<usize>().ok()))
        .unwrap_or(0);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(skip).take(top).collect();
    let mut body = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#users"),
        "value": page,
    });
    if skip + top < total {
        if let Ok(mut next) = reqwest::Url::parse(&format!("{base}{}", request.url.path())) {
            let pairs: Vec<(String, String)> = request
                .url
                .query_pairs()
                .filter(|(k, _)| k != "$skiptoken")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            next.query_pairs_mut()
                .extend_pairs(pairs)
                .append_pair("$skiptoken", &format!("X'{}", skip + top));
            body["@odata.nextLink"] = json!(next.as_str());
        }
    }
    ResponseTemplate::new(200).set_body_json(body)
}

impl GraphMock {
    pub async fn start(client_id: &str, client_secret: &str) -> GraphMock {
        let mock = GraphMock {
            server: MockServer::start().await,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            state: Arc::new(Mutex::new(State::default())),
            faults: Arc::new(Faults::default()),
        };
        mock.mount().await;
        mock
    }

    pub fn base_url(&self) -> String {
        self.server.uri()
    }

    pub fn token_url(&self) -> String {
        format!("{}/{TENANT}/oauth2/v2.0/token", self.server.uri())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn throttle_next(&self, n: u32) {
        self.faults.throttle_next(n);
    }

    pub fn fail_next(&self, n: u32) {
        self.faults.fail_next(n);
    }

    /// Every access token issued so far stops working (as at expiry).
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn tokens_issued(&self) -> u32 {
        self.lock().tokens_issued
    }

    pub fn add_user(&self, upn: &str, mail: &str, licenses: &[&str]) -> String {
        let id = guid();
        self.lock().users.insert(
            id.clone(),
            GraphUser {
                id: id.clone(),
                upn: upn.into(),
                mail: mail.into(),
                enabled: true,
                licenses: licenses.iter().map(|l| l.to_string()).collect(),
                valid_from: "2026-01-01T00:00:00Z".into(),
                last_sign_in: Some("2026-11-01T09:00:00Z".into()),
            },
        );
        id
    }

    pub fn add_group(&self, name: &str, members: &[&str]) -> String {
        let id = guid();
        self.lock().groups.insert(
            id.clone(),
            Group {
                id: id.clone(),
                name: name.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
            },
        );
        id
    }

    pub fn user(&self, id: &str) -> Option<GraphUser> {
        self.lock().users.get(id).cloned()
    }

    pub fn is_member(&self, group: &str, user: &str) -> bool {
        self.lock()
            .groups
            .get(group)
            .is_some_and(|g| g.members.contains(user))
    }

    pub fn remove_user(&self, id: &str) {
        let mut state = self.lock();
        state.users.remove(id);
        for group in state.groups.values_mut() {
            group.members.remove(id);
        }
    }

    fn route(
        &self,
        handler: impl Fn(&mut State, &str, &Request, &[&str]) -> ResponseTemplate
            + Send
            + Sync
            + 'static,
    ) -> impl Fn(&Request) -> ResponseTemplate + Send + Sync + 'static {
        let state = self.state.clone();
        let faults = self.faults.clone();
        let base = self.base_url();
        move |request: &Request| {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            let bearer = header(request, "authorization")
                .and_then(|value| value.strip_prefix("Bearer ").map(str::to_string));
            if !bearer.is_some_and(|token| state.tokens.contains(&token)) {
                // https://learn.microsoft.com/en-us/graph/errors#http-status-codes
                return graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "Access token has expired or is not yet valid.",
                );
            }
            if faults.take_throttle() {
                // https://learn.microsoft.com/en-us/graph/throttling
                return graph_error(
                    429,
                    "TooManyRequests",
                    "Too many requests, retry after some time",
                )
                .insert_header("Retry-After", "1");
            }
            if faults.take_fail() {
                return graph_error(
                    503,
                    "serviceNotAvailable",
                    "The service is temporarily unavailable.",
                );
            }
            let segments: Vec<&str> = request.url.path().split('/').skip(1).collect();
            handler(&mut state, &base, request, &segments)
        }
    }

    async fn mount(&self) {
        // Token endpoint, client credentials grant (form-encoded).
        // https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#get-a-token
        let state = self.state.clone();
        let (id, secret) = (self.client_id.clone(), self.client_secret.clone());
        Mock::given(method("POST"))
            .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
            .respond_with(move |request: &Request| {
                let form: BTreeMap<String, String> =
                    url_form(&String::from_utf8_lossy(&request.body));
                let form_type = header(request, "content-type").unwrap_or_default();
                if !form_type.starts_with("application/x-www-form-urlencoded")
                    || form.get("grant_type").map(String::as_str) != Some("client_credentials")
                    || form.get("scope").map(String::as_str)
                        != Some("https://graph.microsoft.com/.default")
                {
                    return ResponseTemplate::new(400).set_body_json(json!({
                        "error": "invalid_request",
                        "error_description": "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
                        "error_codes": [900144],
                    }));
                }
                if form.get("client_id") != Some(&id) {
                    return ResponseTemplate::new(400).set_body_json(json!({
                        "error": "unauthorized_client",
                        "error_description": "AADSTS700016: Application with identifier was not found in the directory.",
                        "error_codes": [700016],
                    }));
                }
                if form.get("client_secret") != Some(&secret) {
                    return ResponseTemplate::new(401).set_body_json(json!({
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                        "error_codes": [7000215],
                    }));
                }
                let token = format!("eyJ0eXAiOiJKV1Qi.{:032x}", fastrand::u128(..));
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                state.tokens.insert(token.clone());
                state.tokens_issued += 1;
                ResponseTemplate::new(200).set_body_json(json!({
                    "token_type": "Bearer",
                    "expires_in": 3599,
                    "ext_expires_in": 3599,
                    "access_token": token,
                }))
            })
            .mount(&self.server)
            .await;

        // List users with $filter / $select / $top.
        // https://learn.microsoft.com/en-us/graph/api/user-list?view=graph-rest-1.0
        Mock::given(method("GET"))
            .and(path("/v1.0/users"))
            .respond_with(self.route(|state, base, request, _| {
                let filter = query(request, "$filter");
                let mut items = Vec::new();
                for user in state.users.values() {
                    if let Some(filter) = &filter {
                        match filter_matches(filter, user) {
                            Some(true) => {}
                            Some(false) => continue,
                            None => {
                                return graph_error(
                                    400,
                                    "Request_UnsupportedQuery",
                                    "Unsupported or invalid query filter clause specified.",
                                )
                            }
                        }
                    }
                    items.push(project(request, user_json(user)));
                }
                collection(base, request, items)
            }))
            .mount(&self.server)
            .await;

        // Get a user.
        // https://learn.microsoft.com/en-us/graph/api/user-get?view=graph-rest-1.0
        Mock::given(method("GET"))
            .and(path_regex(r"^/v1\.0/users/[^/]+$"))
            .respond_with(
                self.route(|state, _, request, seg| match state.users.get(seg[2]) {
                    Some(user) => {
                        ResponseTemplate::new(200).set_body_json(project(request, user_json(user)))
                    }
                    None => not_found(seg[2]),
                }),
            )
            .mount(&self.server)
            .await;

        // The user's direct memberships: groups (and roles, which the connector skips).
        // https://learn.microsoft.com/en-us/graph/api/user-list-memberof?view=graph-rest-1.0
        Mock::given(method("GET"))
            .and(path_regex(r"^/v1\.0/users/[^/]+/memberOf$"))
            .respond_with(self.route(|state, base, request, seg| {
                if !state.users.contains_key(seg[2]) {
                    return not_found(seg[2]);
                }
                let mut items: Vec<Value> = state
                    .groups
                    .values()
                    .filter(|g| g.members.contains(seg[2]))
                    .map(|g| {
                        json!({"@odata.type": "#microsoft.graph.group", "id": g.id,
                               "displayName": g.name, "groupTypes": [],
                               "onPremisesSyncEnabled": null})
                    })
                    .collect();
                items.push(json!({"@odata.type": "#microsoft.graph.directoryRole",
                                  "id": "62e90394-69f5-4237-9190-012177145e10",
                                  "displayName": "Directory Readers"}));
                collection(base, request, items)
            }))
            .mount(&self.server)
            .await;

        // Revoke sign-in sessions: 200 with `value: true`; moves signInSessionsValidFromDateTime.
        // https://learn.microsoft.com/en-us/graph/api/user-revokesigninsessions?view=graph-rest-1.0
        Mock::given(method("POST"))
            .and(path_regex(r"^/v1\.0/users/[^/]+/revokeSignInSessions$"))
            .respond_with(
                self.route(|state, _, _, seg| match state.users.get_mut(seg[2]) {
                    None => not_found(seg[2]),
                    Some(user) => {
                        user.valid_from = now();
                        ResponseTemplate::new(200).set_body_json(json!({
                        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean",
                        "value": true,
                    }))
                    }
                }),
            )
            .mount(&self.server)
            .await;

        // Update a user: 204 No Content.
        // https://learn.microsoft.com/en-us/graph/api/user-update?view=graph-rest-1.0
        Mock::given(method("PATCH"))
            .and(path_regex(r"^/v1\.0/users/[^/]+$"))
            .respond_with(self.route(|state, _, request, seg| {
                let body: Value = match request.body_json() {
                    Ok(body)
                        if header(request, "content-type").as_deref()
                            == Some("application/json") =>
                    {
                        body
                    }
                    _ => {
                        return graph_error(
                            400,
                            "BadRequest",
                            "Unable to read JSON request payload.",
                        )
                    }
                };
                match state.users.get_mut(seg[2]) {
                    None => not_found(seg[2]),
                    Some(user) => {
                        if let Some(enabled) = body["accountEnabled"].as_bool() {
                            user.enabled = enabled;
                        }
                        ResponseTemplate::new(204)
                    }
                }
            }))
            .mount(&self.server)
            .await;

        // Remove a group member: 204; 404 when the member is not in the group.
        // https://learn.microsoft.com/en-us/graph/api/group-delete-members?view=graph-rest-1.0
        Mock::given(method("DELETE"))
            .and(path_regex(r"^/v1\.0/groups/[^/]+/members/[^/]+/\$ref$"))
            .respond_with(
                self.route(|state, _, _, seg| match state.groups.get_mut(seg[2]) {
                    Some(group) => {
                        if group.members.remove(seg[4]) {
                            ResponseTemplate::new(204)
                        } else {
                            not_found(seg[4])
                        }
                    }
                    None => not_found(seg[2]),
                }),
            )
            .mount(&self.server)
            .await;

        // Add a group member: 204; 400 when the reference exists already.
        // https://learn.microsoft.com/en-us/graph/api/group-post-members?view=graph-rest-1.0
        Mock::given(method("POST"))
            .and(path_regex(r"^/v1\.0/groups/[^/]+/members/\$ref$"))
            .respond_with(self.route(|state, _, request, seg| {
                let body: Value = request.body_json().unwrap_or(Value::Null);
                let Some(member) = body["@odata.id"]
                    .as_str()
                    .and_then(|id| id.rsplit('/').next())
                    .map(str::to_string)
                else {
                    return graph_error(
                        400,
                        "Request_BadRequest",
                        "Invalid value specified for property '@odata.id'.",
                    );
                };
                if !state.users.contains_key(&member) {
                    return not_found(&member);
                }
                match state.groups.get_mut(seg[2]) {
                    None => not_found(seg[2]),
                    Some(group) => {
                        if group.members.insert(member) {
                            ResponseTemplate::new(204)
                        } else {
                            graph_error(
                                400,
                                "Request_BadRequest",
                                "One or more added object references already exist for the following modified properties: 'members'.",
                            )
                        }
                    }
                }
            }))
            .mount(&self.server)
            .await;

        // assignLicense: both addLicenses and removeLicenses are required; 200 with the user.
        // https://learn.microsoft.com/en-us/graph/api/user-assignlicense?view=graph-rest-1.0
        Mock::given(method("POST"))
            .and(path_regex(r"^/v1\.0/users/[^/]+/assignLicense$"))
            .respond_with(self.route(|state, _, request, seg| {
                let body: Value = request.body_json().unwrap_or(Value::Null);
                let (Some(add), Some(remove)) = (
                    body["addLicenses"].as_array(),
                    body["removeLicenses"].as_array(),
                ) else {
                    return graph_error(
                        400,
                        "Request_BadRequest",
                        "Invalid value specified for property 'addLicenses' or 'removeLicenses'.",
                    );
                };
                let Some(user) = state.users.get_mut(seg[2]) else {
                    return not_found(seg[2]);
                };
                for sku in remove.iter().filter_map(Value::as_str) {
                    if !user.licenses.remove(sku) {
                        return graph_error(
                            400,
                            "Request_BadRequest",
                            "User does not have a corresponding license.",
                        );
                    }
                }
                for sku in add.iter().filter_map(|l| l["skuId"].as_str()) {
                    user.licenses.insert(sku.to_string());
                }
                ResponseTemplate::new(200).set_body_json(Value::Object(user_json(user)))
            }))
            .mount(&self.server)
            .await;

        // Delete a user: 204 (it goes to deleted items).
        // https://learn.microsoft.com/en-us/graph/api/user-delete?view=graph-rest-1.0
        Mock::given(method("DELETE"))
            .and(path_regex(r"^/v1\.0/users/[^/]+$"))
            .respond_with(self.route(|state, _, _, seg| {
                if state.users.remove(seg[2]).is_none() {
                    return not_found(seg[2]);
                }
                for group in state.groups.values_mut() {
                    group.members.remove(seg[2]);
                }
                ResponseTemplate::new(204)
            }))
            .mount(&self.server)
            .await;
    }
}

/// `application/x-www-form-urlencoded` pairs.
fn url_form(body: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://form/?{body}"))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default()
}
