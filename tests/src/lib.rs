//! deprov-tests: harnesses that start real servers for the integration tests.
//!
//! Each test starts its own server on a free loopback port, so tests run in parallel.

pub mod aws;
pub mod conformance;
pub mod fault_proxy;
pub mod postgres;
pub mod slapd;
pub mod vendors;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a server may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A real SCIM 2.0 server (`scim2-server` from PyPI, 0.8.x) on a loopback port, with
/// users and groups in memory. Killed when dropped.
///
/// The binary is, in order: `$DEPROV_SCIM2_SERVER`, `$HOME/.cache/deprov-venv/bin/scim2-server`,
/// `scim2-server` on `PATH`. `tests/run.sh` installs it.
///
/// ```ignore
/// let server = Scim2Server::start().await;
/// let ada = server.create_user("ada.l", "ada@example.com").await;
/// let eng = server.create_group("eng", &[&ada]).await;
/// ```
pub struct Scim2Server {
    /// The SCIM base URL, e.g. `http://127.0.0.1:40123/v2` (no trailing slash).
    pub base_url: String,
    /// The bearer token the server accepts (random per server).
    pub token: String,
    child: Child,
    log: Option<tempfile::NamedTempFile>,
    http: reqwest::Client,
}

impl Scim2Server {
    /// Starts a server and waits (at most 15 s) until `GET /ServiceProviderConfig` answers.
    /// Panics, naming the log file, when the binary is missing or the server does not come
    /// up: this is test set-up.
    pub async fn start() -> Scim2Server {
        let binary = scim2_server_binary();
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&binary).await {
                Ok(server) => return server,
                // Most likely another process took the port between probe and bind.
                Err(err) => last_error = err,
            }
        }
        panic!("scim2-server did not start: {last_error}");
    }

    async fn try_start(binary: &Path) -> Result<Scim2Server, String> {
        let port = free_port().map_err(|err| format!("no free port: {err}"))?;
        let token = format!("test-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let log = tempfile::Builder::new()
            .prefix("scim2-server-")
            .suffix(".log")
            .tempfile()
            .map_err(|err| format!("cannot create a log file: {err}"))?;
        let stderr = log
            .reopen()
            .map_err(|err| format!("cannot open {}: {err}", log.path().display()))?;
        let stdout = log
            .reopen()
            .map_err(|err| format!("cannot open {}: {err}", log.path().display()))?;
        let child = Command::new(binary)
            .args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
            .args(["--bearer-token", &token])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
        let mut server = Scim2Server {
            base_url: format!("http://127.0.0.1:{port}/v2"),
            token,
            child,
            log: Some(log),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|err| format!("cannot build an HTTP client: {err}"))?,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{} exited with {status}; log {}:\n{}",
                    binary.display(),
                    server.log_path().display(),
                    server.log_text()
                ));
            }
            let probe = server
                .http
                .get(server.url("/ServiceProviderConfig"))
                .bearer_auth(&server.token)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok_and(|response| response.status().is_success()) {
                return Ok(server);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "{} did not answer on port {port} within {}s; log {}:\n{}",
                    binary.display(),
                    START_TIMEOUT.as_secs(),
                    server.log_path().display(),
                    server.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `base_url` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Where the server's output goes.
    pub fn log_path(&self) -> PathBuf {
        self.log
            .as_ref()
            .map(|log| log.path().to_path_buf())
            .unwrap_or_default()
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Some(mut file) = self.log.as_ref().and_then(|log| log.reopen().ok()) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Sends a request with the server's token; returns the status and the JSON body
    /// (`Null` when empty). Panics on transport errors.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.clone(), self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path} failed: {err}"));
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: cannot read the body: {err}"));
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{method} {path}: body is not JSON ({err}): {text}"))
        };
        (status, body)
    }

    async fn create(&self, path: &str, body: Value) -> String {
        let (status, created) = self.request(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "POST {path} answered {status}: {created}");
        created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {path} returned no id: {created}"))
            .to_string()
    }

    /// Creates an active user with one primary work email; returns its id.
    pub async fn create_user(&self, user_name: &str, email: &str) -> String {
        self.create(
            "/Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": user_name,
                "active": true,
                "emails": [{"value": email, "type": "work", "primary": true}],
            }),
        )
        .await
    }

    /// Creates a group with these member user ids; returns its id.
    pub async fn create_group(&self, name: &str, member_ids: &[&str]) -> String {
        let members: Vec<Value> = member_ids.iter().map(|id| json!({"value": id})).collect();
        self.create(
            "/Groups",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": name,
                "members": members,
            }),
        )
        .await
    }

    async fn get(&self, path: &str) -> Option<Value> {
        match self.request(reqwest::Method::GET, path, None).await {
            (200, body) => Some(body),
            (404, _) => None,
            (status, body) => panic!("GET {path} answered {status}: {body}"),
        }
    }

    /// The user as the server holds it, `None` when it does not exist.
    pub async fn get_user(&self, id: &str) -> Option<Value> {
        self.get(&format!("/Users/{id}")).await
    }

    /// The group as the server holds it, `None` when it does not exist.
    pub async fn get_group(&self, id: &str) -> Option<Value> {
        self.get(&format!("/Groups/{id}")).await
    }

    /// The member ids of a group (empty when it has none or does not exist).
    pub async fn group_member_ids(&self, id: &str) -> Vec<String> {
        self.get_group(id)
            .await
            .and_then(|group| {
                group["members"].as_array().map(|members| {
                    members
                        .iter()
                        .filter_map(|m| m["value"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}

impl Drop for Scim2Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(log) = self.log.take() {
                match log.keep() {
                    Ok((_, path)) => eprintln!("scim2-server log kept at {}", path.display()),
                    Err(err) => eprintln!("scim2-server log could not be kept: {err}"),
                }
            }
        }
    }
}

/// The `scim2-server` to run; panics with what to do when there is none.
pub fn scim2_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DEPROV_SCIM2_SERVER") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return path;
        }
        panic!(
            "DEPROV_SCIM2_SERVER={} is not a file; point it at a scim2-server binary or unset it",
            path.display()
        );
    }
    if let Some(home) = std::env::var_os("HOME") {
        let path = Path::new(&home).join(".cache/deprov-venv/bin/scim2-server");
        if path.is_file() {
            return path;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let path = dir.join("scim2-server");
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "scim2-server is not installed: run tests/run.sh (it installs it into \
         ~/.cache/deprov-venv), or set DEPROV_SCIM2_SERVER to its path"
    );
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `deprov` binary next to the running test's executable (`cargo build -p deprov`
/// builds it; `tests/run.sh` does). Panics, saying so, when it is missing.
pub fn deprov_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|err| panic!("no test executable: {err}"));
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("deprov"))
        .unwrap_or_else(|| panic!("{} has no grandparent directory", exe.display()));
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p deprov` (tests/run.sh does)",
        binary.display()
    );
    binary
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
