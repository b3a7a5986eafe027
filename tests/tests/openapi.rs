//! `infra/openapi.yaml` against the intake: every route it documents exists (and no
//! other), every status it documents is one the handler answers for the case the
//! description names, each answer has the documented shape, and the event schema in it
//! is the Rust type's. Then schemathesis fuzzes `deprov serve` from the same file and
//! must find no server error.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use deprov_core::intake::{self, bamboohr, okta_hooks, Delivery, Deps, Route, Settings};
use deprov_core::launch::MemoryLauncher;
use deprov_core::ports::{Secret, SecretError, SecretSource};
use deprov_core::signature;
use deprov_core::testing::{ManualClock, MemorySecrets, MemoryStore};
use deprov_core::LifecycleEvent;
use deprov_tests::free_port;
use http::{HeaderMap, Method};
use serde_json::{json, Value};

fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/openapi.yaml")
}

fn python() -> String {
    std::env::var("DEPROV_VENV_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The spec as JSON (PyYAML reads it; the tests' venv has it).
fn spec() -> Value {
    let output = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(spec_path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Follows a local `$ref`.
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            resolve(spec, spec.pointer(pointer).unwrap_or(&Value::Null))
        }
        None => value,
    }
}

/// The published event schema with its definitions moved into components, as the spec
/// holds it.
fn embedded_event_schema() -> Value {
    fn rewrite(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    if key == "$ref" {
                        if let Value::String(text) = item {
                            *text = text.replace("#/definitions/", "#/components/schemas/");
                        }
                    } else {
                        rewrite(item);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    let mut schema = LifecycleEvent::json_schema();
    rewrite(&mut schema);
    schema
}

#[test]
fn the_spec_documents_exactly_the_routes_and_the_event_schema_is_the_rust_types() {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut routes: Vec<&str> = Route::ALL.iter().map(|route| route.path()).collect();
    routes.sort_unstable();
    assert_eq!(documented, routes);
    for route in Route::ALL {
        let mut methods: Vec<String> = paths[route.path()]
            .as_object()
            .unwrap()
            .keys()
            .map(|method| method.to_uppercase())
            .collect();
        methods.sort_unstable();
        let mut allowed: Vec<String> = route.allow().split(", ").map(String::from).collect();
        allowed.sort_unstable();
        assert_eq!(methods, allowed, "{}", route.path());
    }

    let schemas = &spec["components"]["schemas"];
    let mut expected = embedded_event_schema();
    let definitions = expected
        .as_object_mut()
        .unwrap()
        .remove("definitions")
        .unwrap();
    expected.as_object_mut().unwrap().remove("$schema");
    assert_eq!(
        schemas["LifecycleEvent"], expected,
        "components.schemas.LifecycleEvent differs from the Rust type's schema"
    );
    for (name, definition) in definitions.as_object().unwrap() {
        assert_eq!(&schemas[name], definition, "components.schemas.{name}");
    }
}

// ----- every documented status, produced by the handler ----------------------------------

const KEY: &str = "openapi-webhook-key";
const BAMBOO_KEY: &str = "openapi-bamboo-key";
const OKTA_KEY: &str = "openapi-okta-secret";

/// Memory secrets that can also be unreadable (Secrets Manager down).
struct TestSecrets {
    inner: MemorySecrets,
    unreadable: bool,
}

#[async_trait]
impl SecretSource for TestSecrets {
    async fn secret(&self, name: &str) -> Result<Secret, SecretError> {
        if self.unreadable {
            return Err(SecretError::Unreadable {
                name: name.into(),
                reason: "service unavailable".into(),
            });
        }
        self.inner.secret(name).await
    }
}

type TestDeps = Deps<MemoryStore, TestSecrets, MemoryLauncher, MemoryLauncher, ManualClock>;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 17, 0, 0).unwrap()
}

fn deps() -> TestDeps {
    Deps {
        runs: MemoryStore::default(),
        secrets: TestSecrets {
            inner: MemorySecrets::default()
                .with("webhook", "key", KEY)
                .with("bamboohr", "key", BAMBOO_KEY)
                .with("okta", "key", OKTA_KEY),
            unreadable: false,
        },
        starter: MemoryLauncher::default(),
        scheduler: MemoryLauncher::default(),
        clock: ManualClock::at(now()),
        settings: Settings {
            bamboohr_secret: Some("bamboohr".into()),
            okta_secret: Some("okta".into()),
            workday_trusted: true,
            ..Settings::generic("webhook")
        },
    }
}

#[derive(Clone)]
struct Case {
    method: Method,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    body: Vec<u8>,
    /// Delivered first (a conflict needs an earlier delivery).
    before: Option<(HeaderMap, Vec<u8>)>,
}

fn event_body(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": id, "source": "workday", "kind": "termination",
        "termination_type": "voluntary",
        "person": {"id": "E1", "email": "a@example.com"},
        "effective_at": "2026-11-25T18:00:00+01:00", "requested_by": "hr"
    }))
    .unwrap()
}

fn signed(body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        signature::HEADER,
        signature::sign(KEY.as_bytes(), now().timestamp(), body)
            .parse()
            .unwrap(),
    );
    headers
}

fn bamboo_body(status: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"employees": [{"id": 7, "fields": {
        "Employment Status": status, "Work Email": "b@example.com",
        "Termination Date": "2026-11-20"}}]}))
    .unwrap()
}

fn bamboo_signed(body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let t = now().timestamp().to_string();
    headers.insert(
        bamboohr::SIGNATURE_HEADER,
        bamboohr::sign(BAMBOO_KEY.as_bytes(), &t, body)
            .parse()
            .unwrap(),
    );
    headers.insert(bamboohr::TIMESTAMP_HEADER, t.parse().unwrap());
    headers
}

fn okta_body(uuid: &str, event_type: &str, login: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"data": {"events": [{
        "uuid": uuid, "eventType": event_type, "published": "2026-11-25T16:59:00Z",
        "target": [{"type": "User", "id": "00u1", "alternateId": login}]}]}}))
    .unwrap()
}

fn okta_auth(extra: Option<(&str, &str)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(okta_hooks::AUTH_HEADER, OKTA_KEY.parse().unwrap());
    if let Some((name, value)) = extra {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    headers
}

/// The case a documented (route, method, status) describes, and how to set the deps up.
fn case(path: &str, method: &str, status: u16) -> (Case, fn(&mut TestDeps)) {
    fn none(_: &mut TestDeps) {}
    fn broken_key(deps: &mut TestDeps) {
        deps.secrets.inner = MemorySecrets::default()
            .with("webhook", "other", KEY)
            .with("bamboohr", "other", KEY)
            .with("okta", "other", KEY);
    }
    fn secrets_down(deps: &mut TestDeps) {
        deps.secrets.unreadable = true;
    }
    fn starts_fail(deps: &mut TestDeps) {
        deps.starter.fail_next(10);
    }
    fn unconfigured(deps: &mut TestDeps) {
        deps.settings.bamboohr_secret = None;
        deps.settings.okta_secret = None;
    }
    fn untrusted(deps: &mut TestDeps) {
        deps.settings.workday_trusted = false;
    }
    let base = |method: Method, path: &'static str, headers: HeaderMap, body: Vec<u8>| Case {
        method,
        path,
        query: None,
        headers,
        body,
        before: None,
    };
    let big = vec![b' '; 70_000];
    match (path, method, status) {
        ("/events", "post", status) | ("/sources/workday", "post", status) => {
            let path = if path == "/events" {
                "/events"
            } else {
                "/sources/workday"
            };
            let body = event_body("hr-1");
            let ok = base(Method::POST, path, signed(&body), body.clone());
            match status {
                200 => (
                    Case {
                        query: Some("dry_run=true"),
                        ..ok
                    },
                    none,
                ),
                202 => (ok, none),
                400 => (base(Method::POST, path, signed(b"{"), b"{".to_vec()), none),
                401 => (base(Method::POST, path, HeaderMap::new(), body), none),
                403 => (ok, untrusted),
                409 => {
                    let other = String::from_utf8(body.clone())
                        .unwrap()
                        .replace("a@example.com", "z@example.com")
                        .into_bytes();
                    (
                        Case {
                            before: Some((signed(&body), body)),
                            ..base(Method::POST, path, signed(&other), other)
                        },
                        none,
                    )
                }
                413 => (base(Method::POST, path, HeaderMap::new(), big), none),
                500 => (ok, broken_key),
                503 => (ok, starts_fail),
                other => panic!("no case for {path} {other}"),
            }
        }
        ("/sources/bamboohr", "post", status) => {
            let body = bamboo_body("Terminated");
            let ok = base(
                Method::POST,
                "/sources/bamboohr",
                bamboo_signed(&body),
                body.clone(),
            );
            match status {
                200 => {
                    let body = bamboo_body("Full-Time");
                    (
                        base(
                            Method::POST,
                            "/sources/bamboohr",
                            bamboo_signed(&body),
                            body,
                        ),
                        none,
                    )
                }
                202 => (ok, none),
                400 => {
                    let body = b"{\"employees\": {}}".to_vec();
                    (
                        base(
                            Method::POST,
                            "/sources/bamboohr",
                            bamboo_signed(&body),
                            body,
                        ),
                        none,
                    )
                }
                401 => (
                    base(Method::POST, "/sources/bamboohr", HeaderMap::new(), body),
                    none,
                ),
                404 => (ok, unconfigured),
                413 => (
                    base(Method::POST, "/sources/bamboohr", HeaderMap::new(), big),
                    none,
                ),
                500 => (ok, broken_key),
                503 => (ok, starts_fail),
                other => panic!("no case for {path} {other}"),
            }
        }
        ("/sources/okta", "get", status) => {
            let ok = base(
                Method::GET,
                "/sources/okta",
                okta_auth(Some((okta_hooks::CHALLENGE_HEADER, "challenge-1"))),
                Vec::new(),
            );
            match status {
                200 => (ok, none),
                400 => (
                    base(Method::GET, "/sources/okta", okta_auth(None), Vec::new()),
                    none,
                ),
                401 => (
                    base(Method::GET, "/sources/okta", HeaderMap::new(), Vec::new()),
                    none,
                ),
                404 => (ok, unconfigured),
                500 => (ok, broken_key),
                503 => (ok, secrets_down),
                other => panic!("no case for {path} {other}"),
            }
        }
        ("/sources/okta", "post", status) => {
            let body = okta_body("u-1", "user.lifecycle.deactivate", "o@example.com");
            let ok = base(Method::POST, "/sources/okta", okta_auth(None), body.clone());
            match status {
                200 => {
                    let body = okta_body("u-2", "user.session.start", "o@example.com");
                    (
                        base(Method::POST, "/sources/okta", okta_auth(None), body),
                        none,
                    )
                }
                202 => (ok, none),
                400 => (
                    base(
                        Method::POST,
                        "/sources/okta",
                        okta_auth(None),
                        b"{\"data\": {}}".to_vec(),
                    ),
                    none,
                ),
                401 => (
                    base(Method::POST, "/sources/okta", HeaderMap::new(), body),
                    none,
                ),
                404 => (ok, unconfigured),
                409 => {
                    let other = okta_body("u-1", "user.lifecycle.deactivate", "p@example.com");
                    (
                        Case {
                            before: Some((okta_auth(None), body)),
                            ..base(Method::POST, "/sources/okta", okta_auth(None), other)
                        },
                        none,
                    )
                }
                413 => (
                    base(Method::POST, "/sources/okta", okta_auth(None), big),
                    none,
                ),
                500 => (ok, broken_key),
                503 => (ok, starts_fail),
                other => panic!("no case for {path} {other}"),
            }
        }
        (path, method, status) => panic!("no case for {method} {path} {status}"),
    }
}

/// The documented response's schema has the reply's shape: its required keys are there
/// (for `oneOf`/`anyOf`, those of one alternative).
fn conforms(spec: &Value, schema: &Value, body: &Value) -> bool {
    let schema = resolve(spec, schema);
    if let Some(options) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        return options.iter().any(|option| conforms(spec, option, body));
    }
    let required_present =
        schema
            .get("required")
            .and_then(Value::as_array)
            .is_none_or(|required| {
                required
                    .iter()
                    .filter_map(Value::as_str)
                    .all(|key| body.get(key).is_some())
            });
    let enums_hold = schema
        .get("properties")
        .and_then(Value::as_object)
        .is_none_or(|properties| {
            properties.iter().all(|(key, property)| {
                let property = resolve(spec, property);
                match (property.get("enum"), body.get(key)) {
                    (Some(Value::Array(allowed)), Some(value)) => allowed.contains(value),
                    _ => true,
                }
            })
        });
    body.is_object() && required_present && enums_hold
}

#[tokio::test]
async fn every_documented_status_is_what_the_handler_answers_for_its_case() {
    let spec = spec();
    let mut checked = 0;
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let status: u16 = status.parse().unwrap();
                let (case, setup) = case(path, method, status);
                let mut deps = deps();
                setup(&mut deps);
                if let Some((headers, body)) = &case.before {
                    let first = intake::accept(
                        &deps,
                        Delivery {
                            method: &Method::POST,
                            path: case.path,
                            query: None,
                            headers,
                            body,
                        },
                    )
                    .await;
                    assert!(first.status.is_success(), "{}", first.body);
                }
                let reply = intake::accept(
                    &deps,
                    Delivery {
                        method: &case.method,
                        path: case.path,
                        query: case.query,
                        headers: &case.headers,
                        body: &case.body,
                    },
                )
                .await;
                assert_eq!(
                    reply.status.as_u16(),
                    status,
                    "{method} {path}: documented {status}, answered {} {}",
                    reply.status,
                    reply.body
                );
                let response = resolve(&spec, response);
                let schema = &response["content"]["application/json"]["schema"];
                assert!(
                    conforms(&spec, schema, &reply.body),
                    "{method} {path} {status}: {} does not have the documented shape",
                    reply.body
                );
                if let Some(headers) = response.get("headers").and_then(Value::as_object) {
                    for name in headers.keys() {
                        assert!(
                            reply
                                .headers()
                                .iter()
                                .any(|(header, _)| header.as_str().eq_ignore_ascii_case(name)),
                            "{method} {path} {status}: documented header {name} missing"
                        );
                    }
                }
                // Only the successes may have started or scheduled anything.
                if !reply.status.is_success() && case.before.is_none() {
                    assert!(
                        deps.starter.started().is_empty() && deps.scheduler.scheduled().is_empty(),
                        "{method} {path} {status} started something"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 35, "only {checked} documented responses");
}

// ----- schemathesis against deprov serve ----------------------------------------------------

fn deprov_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = dir.join("deprov");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p deprov` (tests/run.sh does)",
        binary.display()
    );
    binary
}

fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("DEPROV_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = PathBuf::from(home).join(".cache/deprov-venv/bin/schemathesis");
    assert!(
        venv.exists(),
        "schemathesis not found: run tests/run.sh (it installs schemathesis into the venv)"
    );
    venv
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn schemathesis_finds_no_server_error_in_deprov_serve() {
    let dir = tempfile::tempdir().unwrap();
    // Runs that fuzzing manages to start find a closed port and escalate: no target is
    // touched, and the server must still answer every request.
    let closed = free_port().unwrap();
    let policy = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml"),
    )
    .unwrap()
    .replace(
        "http://127.0.0.1:8000/v2",
        &format!("http://127.0.0.1:{closed}/v2"),
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let port = free_port().unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let serve = Killed(
        Command::new(deprov_binary())
            .args(["serve", "--policy", "policy.toml", "--db", "deprov.db"])
            .args(["--port", &port.to_string()])
            .args(["--bamboohr-secret", "deprov/bamboohr"])
            .args(["--okta-secret", "deprov/okta"])
            .arg("--trust-workday-transport")
            .env("DEPROV_SECRET_DEPROV_WEBHOOK", KEY)
            .env("DEPROV_SECRET_DEPROV_BAMBOOHR", BAMBOO_KEY)
            .env("DEPROV_SECRET_DEPROV_OKTA", OKTA_KEY)
            .env("DEPROV_SECRET_EXAMPLE_APP", "unused")
            .env_remove("DEPROV_DB")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "deprov serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = Command::new(schemathesis())
        .arg("run")
        .arg(spec_path())
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
        ])
        .args(["--max-examples", "60", "--workers", "1", "--seed", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "schemathesis failed:\n{text}");
    assert!(
        !text.contains("Server error"),
        "schemathesis reported a server error:\n{text}"
    );
    drop(serve);
}
