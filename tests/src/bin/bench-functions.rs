//! `bench-functions`: the AWS figures of the Lambda functions, which `tests/bench.sh` runs
//! from the release directory where cargo put the functions beside it.
//!
//! 1. Bootstrap size of each function: the release binary as built, stripped of symbols as
//!    `cargo lambda build` packages it, and zipped as the `bootstrap` of a deployment
//!    package (deflate).
//! 2. Start-up to the first event: each binary spawned cold against a minimal Lambda
//!    Runtime API on 127.0.0.1, timed from spawn to its first `GET …/invocation/next`
//!    (what a cold start pays for our init). The AWS endpoints and the instance metadata
//!    endpoint point at a listening trap, so a network call during init is seen.
//! 3. State transitions of one termination with 10 tasks (disable + 9 group removals) on
//!    the emulated deployment (moto executing the real ASL, the real functions through
//!    cargo lambda), and the Step Functions Standard cost per offboarded person.
//!
//! ```text
//! bench-functions [--spawns 20] [--groups 9] [--only sizes|startup|transitions]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{Duration as Days, SecondsFormat, Utc};
use deprov_core::ids;
use deprov_core::ports::RunStore;
use deprov_tests::aws::{workspace_root, Deployment, Emulator, FUNCTIONS};
use deprov_tests::Scim2Server;
use serde_json::json;
use tokio::sync::oneshot;

/// Step Functions Standard, US East (N. Virginia): USD per state transition
/// ($0.025 per 1,000; https://aws.amazon.com/step-functions/pricing/).
const USD_PER_TRANSITION: f64 = 0.025 / 1000.0;

/// How long a spawned function may take to ask for its first event.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the template deploys; this machine cannot build it.
const TEMPLATE_ARCH: &str = "arm64";

fn usage() -> ! {
    eprintln!(
        "usage: bench-functions [--spawns N] [--groups N] [--only sizes|startup|transitions]"
    );
    std::process::exit(2);
}

/// The directory this executable is in: cargo puts the function binaries beside it.
fn profile_dir() -> PathBuf {
    match std::env::current_exe() {
        Ok(exe) => exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        Err(err) => panic!("cannot find this executable's directory: {err}"),
    }
}

fn function_binary(dir: &Path, function: &str) -> PathBuf {
    let path = dir.join(function);
    if !path.is_file() {
        panic!(
            "{} is missing: build the functions beside this binary first \
             (`cargo build --release -p intake -p plan -p worker -p audit -p sweep`)",
            path.display()
        );
    }
    path
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut spawns = 20usize;
    let mut groups = 9usize;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--spawns", Some(n)) => spawns = n.parse().unwrap_or_else(|_| usage()),
            ("--groups", Some(n)) => groups = n.parse().unwrap_or_else(|_| usage()),
            ("--only", Some(part)) if ["sizes", "startup", "transitions"].contains(&&*part) => {
                only = Some(part);
            }
            _ => usage(),
        }
    }
    if spawns == 0 {
        usage();
    }
    let wanted = |part: &str| only.as_deref().is_none_or(|only| only == part);
    let dir = profile_dir();
    if wanted("sizes") {
        sizes(&dir);
    }
    if wanted("startup") {
        if wanted("sizes") {
            println!();
        }
        startup(&dir, spawns).await;
    }
    if wanted("transitions") {
        if only.is_none() {
            println!();
        }
        transitions(groups).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. Bootstrap sizes

fn sizes(dir: &Path) {
    let work = tempfile::tempdir().unwrap_or_else(|err| panic!("no temp dir: {err}"));
    println!(
        "bootstrap size per function ({arch} release build, lto=thin, codegen-units=4; \
         stripped = symbols stripped, as cargo lambda packages it; zipped = the stripped file \
         as `bootstrap`, deflate; MB = 10^6 bytes; goal <= 8 MB zipped):",
        arch = std::env::consts::ARCH
    );
    let mut largest = 0u64;
    for function in FUNCTIONS {
        let binary = function_binary(dir, function);
        let raw = file_size(&binary);
        let folder = work.path().join(function);
        if let Err(err) = std::fs::create_dir(&folder) {
            panic!("cannot create {}: {err}", folder.display());
        }
        let bootstrap = folder.join("bootstrap");
        if let Err(err) = std::fs::copy(&binary, &bootstrap) {
            panic!("cannot copy {}: {err}", binary.display());
        }
        strip(&bootstrap);
        let stripped = file_size(&bootstrap);
        let zipped = zip_bootstrap(&folder);
        largest = largest.max(zipped);
        println!(
            "  {function:<7} raw {:>6.2} MB   stripped {:>6.2} MB   zipped {:>5.2} MB ({:.2} MiB)",
            mb(raw),
            mb(stripped),
            mb(zipped),
            mib(zipped)
        );
    }
    let verdict = |within: bool| if within { "within" } else { "over" };
    println!(
        "  largest zipped package: {:.2} MB = {:.2} MiB ({} 8 MB, {} 8 MiB)",
        mb(largest),
        mib(largest),
        verdict(largest <= 8_000_000),
        verdict(largest <= 8 * 1024 * 1024)
    );
    println!(
        "  architecture: built and measured for {arch} (this machine); the template deploys \
         {TEMPLATE_ARCH}, which is not built here (no aarch64 standard library offline), so \
         the {TEMPLATE_ARCH} sizes are not measured",
        arch = std::env::consts::ARCH
    );
}

fn file_size(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(err) => panic!("cannot read {}: {err}", path.display()),
    }
}

/// `strip --strip-all`, what `strip = "symbols"` (cargo lambda's release setting) does.
fn strip(path: &Path) {
    match std::process::Command::new("strip")
        .arg("--strip-all")
        .arg(path)
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("strip {} exited with {status}", path.display()),
        Err(err) => panic!("cannot run strip (install binutils): {err}"),
    }
}

/// Zips `folder/bootstrap` into `folder/bootstrap.zip` (deflate) with `zip`, else with
/// python3's zipfile; returns the zip's size.
fn zip_bootstrap(folder: &Path) -> u64 {
    let zip = folder.join("bootstrap.zip");
    let zipped = std::process::Command::new("zip")
        .args(["-q", "-X", "bootstrap.zip", "bootstrap"])
        .current_dir(folder)
        .status();
    match zipped {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("zip in {} exited with {status}", folder.display()),
        Err(_) => {
            let script = "import zipfile\n\
                with zipfile.ZipFile('bootstrap.zip', 'w', zipfile.ZIP_DEFLATED) as z:\n    \
                z.write('bootstrap')\n";
            match std::process::Command::new("python3")
                .args(["-c", script])
                .current_dir(folder)
                .status()
            {
                Ok(status) if status.success() => {}
                Ok(status) => panic!("python3 zipfile exited with {status}"),
                Err(err) => panic!("neither zip nor python3 can be run: {err}"),
            }
        }
    }
    file_size(&zip)
}

// ---------------------------------------------------------------------------------------
// 2. Start-up to the first event

/// The invocation the Runtime API hands out next, and who waits for what.
struct Slot {
    function: String,
    event: Option<String>,
    /// When the first `/next` arrived, and how many trap connections there were by then.
    next: Option<oneshot::Sender<(Instant, usize)>>,
    init_error: Option<oneshot::Sender<String>>,
}

#[derive(Clone)]
struct RuntimeApi {
    slot: Arc<Mutex<Option<Slot>>>,
    trapped: Arc<AtomicUsize>,
}

impl RuntimeApi {
    fn with_slot<T>(&self, f: impl FnOnce(&mut Option<Slot>) -> T) -> T {
        match self.slot.lock() {
            Ok(mut slot) => f(&mut slot),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// `GET /2018-06-01/runtime/invocation/next`: the sample event once per spawn; later calls
/// wait forever, as the real API long-polls when there is nothing to do.
async fn next_invocation(State(api): State<RuntimeApi>) -> Response {
    let arrived = Instant::now();
    let trapped = api.trapped.load(Ordering::SeqCst);
    let handed = api.with_slot(|slot| {
        let slot = slot.as_mut()?;
        let event = slot.event.take()?;
        if let Some(next) = slot.next.take() {
            let _ = next.send((arrived, trapped));
        }
        Some((slot.function.clone(), event))
    });
    let Some((function, event)) = handed else {
        return std::future::pending::<Response>().await;
    };
    let deadline = Utc::now().timestamp_millis() + 300_000;
    let mut headers = HeaderMap::new();
    let request_id = format!("{:032x}", fastrand::u128(..));
    for (name, value) in [
        ("lambda-runtime-aws-request-id", request_id),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            format!("arn:aws:lambda:us-east-1:123456789012:function:{function}"),
        ),
        (
            "lambda-runtime-trace-id",
            format!(
                "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0",
                Utc::now().timestamp(),
                fastrand::u64(..),
                fastrand::u64(..)
            ),
        ),
        ("content-type", "application/json".to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, event).into_response()
}

/// `POST …/invocation/{id}/response` and `…/error`: accepted (the bench stops the process
/// once it asked for its first event).
async fn invocation_answer() -> StatusCode {
    StatusCode::ACCEPTED
}

/// `POST /2018-06-01/runtime/init/error`: the function could not start.
async fn init_error(State(api): State<RuntimeApi>, body: String) -> StatusCode {
    api.with_slot(|slot| {
        if let Some(sender) = slot.as_mut().and_then(|slot| slot.init_error.take()) {
            let _ = sender.send(body);
        }
    });
    StatusCode::ACCEPTED
}

/// The sample event a function gets (`events/`).
fn sample_event(function: &str) -> String {
    let file = match function {
        "audit" => "audit-finalize.json".to_string(),
        other => format!("{other}.json"),
    };
    let path = workspace_root().join("events").join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// The template's MemorySize of a function (the Globals default is 256).
fn memory_size(function: &str) -> &'static str {
    match function {
        "plan" | "worker" => "512",
        _ => "256",
    }
}

/// Accepts and counts every connection: the AWS and metadata endpoints of the functions
/// point here, so a call during init shows up as a count.
async fn trap(listener: tokio::net::TcpListener, count: Arc<AtomicUsize>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    }
}

async fn startup(dir: &Path, spawns: usize) {
    let trapped = Arc::new(AtomicUsize::new(0));
    let trap_listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(err) => panic!("cannot bind the trap listener: {err}"),
    };
    let trap_url = match trap_listener.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(err) => panic!("trap listener has no address: {err}"),
    };
    tokio::spawn(trap(trap_listener, trapped.clone()));

    let api = RuntimeApi {
        slot: Arc::new(Mutex::new(None)),
        trapped: trapped.clone(),
    };
    let router = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(invocation_answer),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(invocation_answer),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api.clone());
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(err) => panic!("cannot bind the Runtime API: {err}"),
    };
    let runtime_api = match listener.local_addr() {
        Ok(addr) => addr.to_string(),
        Err(err) => panic!("Runtime API listener has no address: {err}"),
    };
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            eprintln!("bench-functions: the Runtime API stopped: {err}");
        }
    });

    let work = tempfile::tempdir().unwrap_or_else(|err| panic!("no temp dir: {err}"));
    let queue_urls = json!({"scim": format!("{trap_url}/123456789012/bench-scim-tasks")});
    println!(
        "start-up to the first event (spawn -> first GET /next on a local Runtime API, \
         {spawns} cold processes per function after one warm-up, page cache warm, {arch}, \
         this machine; goal <= 30 ms):",
        arch = std::env::consts::ARCH
    );
    let mut init_calls: BTreeMap<&str, usize> = BTreeMap::new();
    for function in FUNCTIONS {
        let binary = function_binary(dir, function);
        let event = sample_event(function);
        let log = work.path().join(format!("{function}.log"));
        let mut samples = Vec::with_capacity(spawns);
        for round in 0..=spawns {
            let (next_tx, next_rx) = oneshot::channel();
            let (error_tx, error_rx) = oneshot::channel();
            api.with_slot(|slot| {
                *slot = Some(Slot {
                    function: function.to_string(),
                    event: Some(event.clone()),
                    next: Some(next_tx),
                    init_error: Some(error_tx),
                })
            });
            let log_file = std::fs::File::create(&log)
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
            let log_err = log_file
                .try_clone()
                .unwrap_or_else(|err| panic!("cannot open {}: {err}", log.display()));
            let mut command = tokio::process::Command::new(&binary);
            command
                .env_clear()
                .envs(lambda_env(function, &runtime_api, &trap_url, work.path()))
                .env("DEPROV_QUEUE_URLS", queue_urls.to_string())
                .current_dir(work.path())
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(log_err)
                .kill_on_drop(true);
            let trapped_before = trapped.load(Ordering::SeqCst);
            let spawned = Instant::now();
            let mut child = command
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
            let outcome = tokio::select! {
                next = next_rx => next.map_err(|_| "the Runtime API dropped the request".to_string()),
                body = error_rx => Err(format!("init error posted: {}", body.unwrap_or_default())),
                status = child.wait() => Err(format!("exited before asking for an event: {status:?}")),
                () = tokio::time::sleep(START_TIMEOUT) => Err(format!("no GET /next within {} s", START_TIMEOUT.as_secs())),
            };
            let _ = child.kill().await;
            api.with_slot(|slot| *slot = None);
            match outcome {
                Ok((arrived, trapped_at_next)) => {
                    if round > 0 {
                        samples.push(arrived.duration_since(spawned));
                    }
                    *init_calls.entry(function).or_default() +=
                        trapped_at_next.saturating_sub(trapped_before);
                }
                Err(err) => panic!(
                    "{function}: {err}; its output:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        samples.sort();
        println!(
            "  {function:<7} median {:>5.1} ms   p90 {:>5.1} ms   min {:>5.1} ms   max {:>5.1} ms",
            ms(percentile(&samples, 50)),
            ms(percentile(&samples, 90)),
            ms(samples[0]),
            ms(samples[samples.len() - 1]),
        );
    }
    let calls: usize = init_calls.values().sum();
    if calls == 0 {
        println!(
            "  network calls during init: none (AWS endpoints and the instance metadata \
             endpoint pointed at a listening trap; 0 connections before any first /next)"
        );
    } else {
        let who: Vec<String> = init_calls
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(function, n)| format!("{function} {n}"))
            .collect();
        println!(
            "  network calls during init: FOUND, connections to the AWS/metadata trap before \
             the first /next: {}",
            who.join(", ")
        );
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// What Lambda sets for a provided.al2023 function, plus the function's own `DEPROV_*`
/// settings (the template's names; the resources need not exist: nothing is called before
/// the first event).
fn lambda_env(
    function: &str,
    runtime_api: &str,
    trap_url: &str,
    work: &Path,
) -> Vec<(String, String)> {
    let missing = work.join("no-such-aws-file").display().to_string();
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "en_US.UTF-8"),
        ("TZ", ":UTC"),
        ("_HANDLER", "bootstrap"),
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023"),
        ("AWS_LAMBDA_RUNTIME_API", runtime_api),
        ("AWS_LAMBDA_FUNCTION_NAME", function),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_size(function)),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "ASIABENCHBENCHBENCH0"),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret-access-key"),
        ("AWS_SESSION_TOKEN", "bench-session-token"),
        // No shared config files on Lambda.
        ("AWS_CONFIG_FILE", &missing),
        ("AWS_SHARED_CREDENTIALS_FILE", &missing),
        // Every AWS call and the instance metadata service go to the trap.
        ("DEPROV_AWS_ENDPOINT_URL", trap_url),
        ("AWS_ENDPOINT_URL", trap_url),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", trap_url),
        ("DEPROV_RUNS_TABLE", "bench-runs"),
        ("DEPROV_AUDIT_TABLE", "bench-audit"),
        ("DEPROV_CONFIG_TABLE", "bench-config"),
        (
            "DEPROV_STATE_MACHINE_ARN",
            "arn:aws:states:us-east-1:123456789012:stateMachine:bench-deprovision",
        ),
        ("DEPROV_WEBHOOK_SECRET", "deprov/webhook"),
        (
            "DEPROV_SCHEDULER_ROLE_ARN",
            "arn:aws:iam::123456789012:role/deprov-scheduler",
        ),
        ("DEPROV_SCHEDULE_GROUP", "default"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect()
}

// ---------------------------------------------------------------------------------------
// 3. State transitions and cost of one termination

/// One SCIM system; the termination disables the account and removes its groups.
fn policy(base_url: &str) -> String {
    format!(
        r#"
version = "bench-1"
[systems.app]
kind = "scim"
secret = "deprov/connector/app"
match_by = "username"
connection = {{ base_url = "{base_url}", timeout_secs = 10 }}
[scenarios.termination]
stages = ["disable", "entitlements"]
"#
    )
}

/// What an execution's history says: billable transitions and where they come from.
#[derive(Default)]
struct HistoryCount {
    /// `…StateEntered` events: one per step executed.
    entered: usize,
    /// Task states entered, and tasks scheduled (more scheduled than entered = retries).
    task_states: usize,
    tasks_scheduled: usize,
    /// State name → times entered.
    by_state: BTreeMap<String, usize>,
    /// First and last event time.
    span: Option<(f64, f64)>,
}

async fn history_count(aws: &Emulator, execution_arn: &str) -> HistoryCount {
    let mut count = HistoryCount::default();
    let mut token = None;
    loop {
        let page = aws
            .sfn()
            .get_execution_history()
            .execution_arn(execution_arn)
            .set_next_token(token)
            .max_results(1000)
            .send()
            .await
            .unwrap_or_else(|err| panic!("GetExecutionHistory: {err:?}"));
        for event in &page.events {
            let kind = event.r#type.as_str();
            let at = event.timestamp.as_secs_f64();
            count.span = Some(match count.span {
                None => (at, at),
                Some((first, last)) => (first.min(at), last.max(at)),
            });
            if kind.ends_with("StateEntered") {
                count.entered += 1;
                if kind == "TaskStateEntered" {
                    count.task_states += 1;
                }
                let name = event
                    .state_entered_event_details()
                    .map(|details| details.name().to_string())
                    .unwrap_or_default();
                *count.by_state.entry(name).or_default() += 1;
            }
            if kind == "TaskScheduled" || kind == "LambdaFunctionScheduled" {
                count.tasks_scheduled += 1;
            }
        }
        token = page.next_token;
        if token.is_none() {
            return count;
        }
    }
}

async fn transitions(groups: usize) {
    let server = Scim2Server::start().await;
    let person = server.create_user("ada.l", "ada@example.com").await;
    for index in 0..groups {
        server
            .create_group(&format!("team-{index}"), &[&person])
            .await;
    }
    let mut aws = Emulator::deploy(Deployment {
        policy: &policy(&server.base_url),
        kinds: &["scim"],
        secrets: &[(
            "deprov/connector/app",
            json!({"token": server.token}).to_string(),
        )],
        webhook_key: "bench-webhook-key-0123456789",
    })
    .await;

    let event_id = format!("bench-{:08x}", fastrand::u32(..));
    let input = json!({
        "event": {
            "event_id": event_id,
            "source": "workday",
            "kind": "termination",
            "termination_type": "involuntary",
            "person": {"id": "P-ada", "email": "ada@example.com", "usernames": {"app": "ada.l"}},
            "effective_at": (Utc::now() - Days::minutes(5)).to_rfc3339_opts(SecondsFormat::Secs, true),
            "requested_by": "bench"
        },
        "dry_run": false
    });
    let run_id = ids::run_id("workday", &event_id);
    let started = Instant::now();
    let execution_arn = aws.start_execution(&run_id, &input).await;
    let done = aws.finished(&execution_arn).await;
    let wall = started.elapsed();
    if done.status != aws_sdk_sfn::types::ExecutionStatus::Succeeded {
        panic!(
            "the execution ended {:?}: {:?} {:?}; logs in {}",
            done.status,
            done.error,
            done.cause,
            aws.logs_dir().display()
        );
    }
    let tasks = match aws.run_store().get_run(&run_id).await {
        Ok(Some(run)) => run.plan.task_count(),
        Ok(None) => panic!("run {run_id} is not in the runs table"),
        Err(err) => panic!("reading run {run_id}: {err}"),
    };
    let user = server.get_user(&person).await;
    if user
        .as_ref()
        .map(|user| user["active"] != false)
        .unwrap_or(true)
    {
        panic!("the person is still active after the run: {user:?}");
    }

    let counted = aws.state_transitions(&execution_arn).await;
    let history = history_count(&aws, &execution_arn).await;
    let retries = history.tasks_scheduled.saturating_sub(history.task_states);
    let billable = history.entered + retries;
    if counted != history.entered {
        eprintln!(
            "bench-functions: Emulator::state_transitions counted {counted}, the history has \
             {} StateEntered events",
            history.entered
        );
    }
    let per_person = billable as f64 * USD_PER_TRANSITION;
    let steps: Vec<String> = history
        .by_state
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!(
        "Step Functions, one termination (1 disable + {groups} group removals = {tasks} tasks, \
         stages disable and entitlements) on the emulated deployment (moto executing the real \
         ASL, the real functions):"
    );
    println!(
        "  state transitions per person: {billable} ({} states entered + {retries} retries)",
        history.entered
    );
    println!("  states entered: {}", steps.join(", "));
    println!(
        "  cost per person: ${per_person:.6} (Standard, us-east-1, $0.025 per 1,000 transitions, \
         aws.amazon.com/step-functions/pricing; free tier of 4,000 transitions/month not deducted)"
    );
    println!("  cost per 1,000 people: ${:.3}", per_person * 1000.0);
    if let Some((first, last)) = history.span {
        println!(
            "  emulator time (not AWS): {:.2} s in the execution history, {:.2} s from \
             StartExecution until seen finished (polled every 0.2 s)",
            last - first,
            wall.as_secs_f64()
        );
    }
}
