//! Emulated AWS for end-to-end runs: moto's server (with state-machine execution on, and
//! its Lambda invocations forwarded to `cargo lambda watch`, see `tests/aws/moto_bridge.py`)
//! and our real function binaries serving cargo lambda's Runtime API. The resources are
//! the template's: the tables of `deprov_aws::tables`, one task queue + DLQ per system
//! kind with an event source mapping on the worker, the state machine from
//! `infra/statemachine/deprovision.asl.json` with its substitutions filled, the policy in
//! the config table and the connector secrets in Secrets Manager.
//!
//! Each `Emulator` has its own moto and cargo lambda on free ports and its own resource
//! names, so tests run in parallel. Everything is stopped when it is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sfn::types::ExecutionStatus;
use deprov_aws::{tables, DynamoAuditLog, DynamoPolicyStore, DynamoRunStore};
use serde_json::Value;

use crate::free_port;

/// How long an execution may take before the test gives up on it.
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The function binaries the harness runs (built by `cargo build -p plan -p worker -p audit
/// -p intake -p sweep`, which tests/run.sh does before the tests).
pub const FUNCTIONS: [&str; 5] = ["intake", "plan", "worker", "audit", "sweep"];

/// A log directory, removed when dropped unless the test is failing.
struct Logs(PathBuf);

impl Logs {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("emulated AWS logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Kills a child process when dropped.
struct Process {
    name: String,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn check_alive(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status}; log {}:\n{}",
                self.name,
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

fn venv_bin(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let path = Path::new(&home).join(".cache/deprov-venv/bin").join(name);
    assert!(
        path.exists(),
        "{} not found: run tests/run.sh (it installs it into ~/.cache/deprov-venv) or set {env}",
        path.display()
    );
    path
}

/// The workspace root (for the ASL file and the bridge script).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where cargo put the function binaries: the profile directory the running executable is
/// in (`target/<profile>/deps/` for a test, `target/<profile>/` for a binary such as
/// `bench-functions`).
fn function_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut profile_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if profile_dir.file_name().is_some_and(|dir| dir == "deps") {
        profile_dir.pop();
    }
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the functions first (`cargo build -p {name}`; tests/run.sh does)",
        path.display()
    );
    path
}

/// The state machine definition with its `${…}` substitutions filled.
pub fn state_machine_definition(substitutions: &BTreeMap<&str, String>) -> String {
    let path = workspace_root().join("infra/statemachine/deprovision.asl.json");
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    for (name, value) in substitutions {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !text.contains("${"),
        "{} has a substitution the harness does not fill",
        path.display()
    );
    text
}

/// One emulated deployment.
pub struct Emulator {
    pub sdk: SdkConfig,
    pub endpoint: String,
    pub prefix: String,
    pub runs_table: String,
    pub audit_table: String,
    pub config_table: String,
    pub state_machine_arn: String,
    pub queue_urls: BTreeMap<String, String>,
    lambda_port: u16,
    /// The processes' logs; kept when a test fails.
    logs: Logs,
    // Dropped in reverse order: functions, cargo lambda, moto.
    functions: Vec<Process>,
    _lambda: Process,
    _moto: Process,
}

/// What to deploy.
pub struct Deployment<'a> {
    /// The policy document stored and activated in the config table.
    pub policy: &'a str,
    /// Connector kinds that get a task queue (and an event source mapping on the worker).
    pub kinds: &'a [&'a str],
    /// Secrets Manager secrets: name → secret string.
    pub secrets: &'a [(&'a str, String)],
    /// The HR webhook key (intake's secret).
    pub webhook_key: &'a str,
}

impl Emulator {
    /// Starts moto and cargo lambda, creates the resources and starts the functions.
    pub async fn deploy(deployment: Deployment<'_>) -> Emulator {
        let logs = Logs(
            tempfile::Builder::new()
                .prefix("deprov-aws-")
                .tempdir()
                .unwrap_or_else(|err| panic!("no temp dir: {err}"))
                .keep(),
        );
        let prefix = format!("e2e{:08x}", fastrand::u32(..));

        let lambda_port = free_port().unwrap_or_else(|err| panic!("no free port: {err}"));
        let lambda = spawn(
            "cargo lambda watch",
            Command::new(venv_bin("cargo-lambda", "DEPROV_CARGO_LAMBDA"))
                .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
                .args(["-A", "127.0.0.1", "-P", &lambda_port.to_string()])
                .current_dir(workspace_root()),
            &logs.path().join("cargo-lambda.log"),
        );

        let (moto, endpoint) = start_moto(lambda_port, logs.path());
        wait_for_port(
            lambda_port,
            "cargo lambda watch",
            &logs.path().join("cargo-lambda.log"),
        )
        .await;
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await;

        let mut emulator = Emulator {
            runs_table: format!("{prefix}-runs"),
            audit_table: format!("{prefix}-audit"),
            config_table: format!("{prefix}-config"),
            state_machine_arn: String::new(),
            queue_urls: BTreeMap::new(),
            sdk,
            endpoint,
            prefix,
            lambda_port,
            logs,
            functions: Vec::new(),
            _lambda: lambda,
            _moto: moto,
        };
        emulator.create_resources(&deployment).await;
        emulator.start_functions();
        emulator
    }

    async fn create_resources(&mut self, deployment: &Deployment<'_>) {
        let dynamodb = aws_sdk_dynamodb::Client::new(&self.sdk);
        tables::create_runs_table(&dynamodb, &self.runs_table)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        tables::create_audit_table(&dynamodb, &self.audit_table)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        tables::create_config_table(&dynamodb, &self.config_table)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let policies = DynamoPolicyStore::new(dynamodb, &self.config_table);
        let version = policies
            .put(deployment.policy)
            .await
            .unwrap_or_else(|err| panic!("storing the policy: {err}"));
        policies
            .activate(&version)
            .await
            .unwrap_or_else(|err| panic!("activating the policy: {err}"));

        let secrets = aws_sdk_secretsmanager::Client::new(&self.sdk);
        let webhook_secret = format!("{}/webhook", self.prefix);
        let mut all_secrets: Vec<(String, String)> = deployment
            .secrets
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect();
        all_secrets.push((
            webhook_secret,
            serde_json::json!({ "key": deployment.webhook_key }).to_string(),
        ));
        for (name, value) in &all_secrets {
            secrets
                .create_secret()
                .name(name)
                .secret_string(value)
                .send()
                .await
                .unwrap_or_else(|err| panic!("creating secret {name}: {err:?}"));
        }

        // Lambda needs a role that exists; moto checks.
        let iam = aws_sdk_iam::Client::new(&self.sdk);
        let role = iam
            .create_role()
            .role_name(format!("{}-functions", self.prefix))
            .assume_role_policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
            )
            .send()
            .await
            .unwrap_or_else(|err| panic!("creating the role: {err:?}"));
        let role_arn = role.role.map(|r| r.arn).unwrap_or_default();
        let lambda = aws_sdk_lambda::Client::new(&self.sdk);
        // An empty zip: moto stores the code, cargo lambda runs the real binaries.
        let empty_zip = {
            let mut zip = b"PK\x05\x06".to_vec();
            zip.extend_from_slice(&[0u8; 18]);
            zip
        };
        let mut function_arns = BTreeMap::new();
        for function in ["plan", "worker", "audit"] {
            let created = lambda
                .create_function()
                .function_name(self.function_name(function))
                .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
                .handler("bootstrap")
                .role(&role_arn)
                .code(
                    aws_sdk_lambda::types::FunctionCode::builder()
                        .zip_file(aws_sdk_lambda::primitives::Blob::new(empty_zip.clone()))
                        .build(),
                )
                .timeout(300)
                .send()
                .await
                .unwrap_or_else(|err| panic!("creating function {function}: {err:?}"));
            function_arns.insert(function, created.function_arn.unwrap_or_default());
        }

        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        for kind in deployment.kinds {
            let dlq = sqs
                .create_queue()
                .queue_name(format!("{}-{kind}-dlq", self.prefix))
                .send()
                .await
                .unwrap_or_else(|err| panic!("creating the {kind} DLQ: {err:?}"));
            let dlq_arn = queue_arn(&sqs, dlq.queue_url().unwrap_or_default()).await;
            let queue = sqs
                .create_queue()
                .queue_name(format!("{}-{kind}-tasks", self.prefix))
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                    serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
                        .to_string(),
                )
                .attributes(
                    aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                    "1800",
                )
                .send()
                .await
                .unwrap_or_else(|err| panic!("creating the {kind} queue: {err:?}"));
            let url = queue.queue_url().unwrap_or_default().to_string();
            let arn = queue_arn(&sqs, &url).await;
            lambda
                .create_event_source_mapping()
                .event_source_arn(arn)
                .function_name(self.function_name("worker"))
                .batch_size(10)
                .function_response_types(
                    aws_sdk_lambda::types::FunctionResponseType::ReportBatchItemFailures,
                )
                .send()
                .await
                .unwrap_or_else(|err| panic!("mapping the {kind} queue to the worker: {err:?}"));
            self.queue_urls.insert(kind.to_string(), url);
        }

        let mut substitutions = BTreeMap::new();
        substitutions.insert("PlanFunctionArn", function_arns["plan"].clone());
        substitutions.insert("AuditFunctionArn", function_arns["audit"].clone());
        let sfn = aws_sdk_sfn::Client::new(&self.sdk);
        let machine = sfn
            .create_state_machine()
            .name(format!("{}-deprovision", self.prefix))
            .definition(state_machine_definition(&substitutions))
            .role_arn(&role_arn)
            .r#type(aws_sdk_sfn::types::StateMachineType::Standard)
            .send()
            .await
            .unwrap_or_else(|err| panic!("creating the state machine: {err:?}"));
        self.state_machine_arn = machine.state_machine_arn;
    }

    /// The deployed name of a function: its FunctionName in moto and the name its process
    /// serves under in cargo lambda, which only routes to names of the workspace's binaries
    /// (each emulator has its own moto and cargo lambda, so equal names do not collide).
    pub fn function_name(&self, function: &str) -> String {
        function.to_string()
    }

    fn start_functions(&mut self) {
        let queue_urls = serde_json::to_string(&self.queue_urls).unwrap_or_default();
        for function in ["intake", "plan", "worker", "audit"] {
            let name = self.function_name(function);
            let log = self.logs.path().join(format!("{function}.log"));
            let mut command = Command::new(function_binary(function));
            command
                .env(
                    "AWS_LAMBDA_RUNTIME_API",
                    format!("http://127.0.0.1:{}/.rt/{name}", self.lambda_port),
                )
                .env("AWS_LAMBDA_FUNCTION_NAME", &name)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
                .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
                .env("RUST_LOG", "info")
                .env("DEPROV_AWS_ENDPOINT_URL", &self.endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("DEPROV_RUNS_TABLE", &self.runs_table)
                .env("DEPROV_AUDIT_TABLE", &self.audit_table)
                .env("DEPROV_CONFIG_TABLE", &self.config_table)
                .env("DEPROV_QUEUE_URLS", &queue_urls)
                .env("DEPROV_STATE_MACHINE_ARN", &self.state_machine_arn)
                .env("DEPROV_WEBHOOK_SECRET", format!("{}/webhook", self.prefix))
                .env(
                    "DEPROV_SCHEDULER_ROLE_ARN",
                    "arn:aws:iam::123456789012:role/deprov-scheduler",
                )
                .env("DEPROV_SCHEDULE_GROUP", "default");
            self.functions.push(spawn(&name, &mut command, &log));
        }
    }

    /// Invokes a function through cargo lambda's Invoke API, as moto does.
    pub async fn invoke(&self, function: &str, payload: &Value) -> (u16, Value) {
        let url = format!(
            "http://127.0.0.1:{}/2015-03-31/functions/{}/invocations",
            self.lambda_port,
            self.function_name(function)
        );
        let response = reqwest::Client::new()
            .post(url)
            .json(payload)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|err| panic!("invoking {function}: {err}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub fn sfn(&self) -> aws_sdk_sfn::Client {
        aws_sdk_sfn::Client::new(&self.sdk)
    }

    /// Starts an execution straight away, as a console user does.
    pub async fn start_execution(&self, name: &str, input: &Value) -> String {
        self.sfn()
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .unwrap_or_else(|err| panic!("StartExecution: {err:?}"))
            .execution_arn
    }

    /// Every execution of the state machine.
    pub async fn executions(&self) -> Vec<aws_sdk_sfn::types::ExecutionListItem> {
        self.sfn()
            .list_executions()
            .state_machine_arn(&self.state_machine_arn)
            .send()
            .await
            .unwrap_or_else(|err| panic!("ListExecutions: {err:?}"))
            .executions
    }

    /// Waits until the execution finishes; returns its description.
    pub async fn finished(
        &mut self,
        execution_arn: &str,
    ) -> aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput {
        let started = Instant::now();
        loop {
            let described = self
                .sfn()
                .describe_execution()
                .execution_arn(execution_arn)
                .send()
                .await
                .unwrap_or_else(|err| panic!("DescribeExecution: {err:?}"));
            if described.status != ExecutionStatus::Running {
                return described;
            }
            if started.elapsed() > EXECUTION_TIMEOUT {
                panic!(
                    "execution {execution_arn} still running after {}s; logs in {}; history:\n{}",
                    EXECUTION_TIMEOUT.as_secs(),
                    self.logs.path().display(),
                    self.history(execution_arn).await.join("\n")
                );
            }
            self.check_functions();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The state transitions of an execution, counted from its history as AWS bills them
    /// (every `…StateEntered` event).
    pub async fn state_transitions(&self, execution_arn: &str) -> usize {
        let mut count = 0;
        let mut token = None;
        loop {
            let page = self
                .sfn()
                .get_execution_history()
                .execution_arn(execution_arn)
                .set_next_token(token)
                .max_results(1000)
                .send()
                .await
                .unwrap_or_else(|err| panic!("GetExecutionHistory: {err:?}"));
            count += page
                .events
                .iter()
                .filter(|event| event.r#type.as_str().ends_with("StateEntered"))
                .count();
            token = page.next_token;
            if token.is_none() {
                return count;
            }
        }
    }

    /// An execution's history, one line per event (for failure messages).
    pub async fn history(&self, execution_arn: &str) -> Vec<String> {
        let Ok(page) = self
            .sfn()
            .get_execution_history()
            .execution_arn(execution_arn)
            .max_results(1000)
            .send()
            .await
        else {
            return Vec::new();
        };
        page.events
            .iter()
            .map(|event| {
                let detail = event
                    .state_entered_event_details()
                    .map(|d| d.name().to_string())
                    .or_else(|| {
                        event
                            .task_failed_event_details()
                            .map(|d| format!("{:?} {:?}", d.error(), d.cause()))
                    })
                    .or_else(|| {
                        event
                            .execution_failed_event_details()
                            .map(|d| format!("{:?} {:?}", d.error(), d.cause()))
                    })
                    .unwrap_or_default();
                format!("{} {}", event.r#type.as_str(), detail)
            })
            .collect()
    }

    fn check_functions(&mut self) {
        let logs = self.logs.path().to_path_buf();
        for process in &mut self.functions {
            // Each function's process is named, and logs, by its function name.
            let log = logs.join(format!("{}.log", process.name));
            process.check_alive(&log);
        }
    }

    pub fn run_store(&self) -> DynamoRunStore {
        DynamoRunStore::new(aws_sdk_dynamodb::Client::new(&self.sdk), &self.runs_table)
    }

    pub fn audit_log(&self) -> DynamoAuditLog {
        DynamoAuditLog::new(
            aws_sdk_dynamodb::Client::new(&self.sdk),
            &self.audit_table,
            &self.runs_table,
        )
    }

    /// A function's log so far (for assertions and failure messages).
    pub fn function_log(&self, function: &str) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("{function}.log")))
            .unwrap_or_default()
    }

    pub fn logs_dir(&self) -> &Path {
        self.logs.path()
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GetQueueAttributes: {err:?}"))
        .attributes
        .and_then(|attributes| {
            attributes
                .get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .unwrap_or_default()
}

fn spawn(name: &str, command: &mut Command, log: &Path) -> Process {
    let file = std::fs::File::create(log)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
    let stderr = file
        .try_clone()
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", log.display()));
    let child = command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
    Process {
        name: name.to_string(),
        child,
    }
}

/// moto through the bridge script; returns the process and its endpoint once it is ready.
fn start_moto(lambda_port: u16, logs: &Path) -> (Process, String) {
    use std::io::BufRead;
    let python = venv_bin("python", "DEPROV_VENV_PYTHON");
    let script = workspace_root().join("tests/aws/moto_bridge.py");
    let log = logs.join("moto.log");
    let stderr = std::fs::File::create(&log)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
    let mut child = Command::new(python)
        .arg(&script)
        .args(["--port", "0"])
        .env(
            "DEPROV_LAMBDA_INVOKE_URL",
            format!("http://127.0.0.1:{lambda_port}"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", script.display()));
    let stdout = child.stdout.take();
    let mut process = Process {
        name: "moto".into(),
        child,
    };
    let Some(stdout) = stdout else {
        panic!("moto has no stdout");
    };
    let mut lines = std::io::BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(port) = line.strip_prefix("MOTO_BRIDGE_READY port=").map(str::trim) {
                    // Keep draining stdout so moto never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines {});
                    return (process, format!("http://127.0.0.1:{port}"));
                }
            }
            _ => {
                process.check_alive(&log);
                panic!(
                    "moto stopped before it was ready; log {}:\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }
}

async fn wait_for_port(port: u16, what: &str, log: &Path) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not listen on {port}; log {}:\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
