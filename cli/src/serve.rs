//! `deprov serve`: the intake over local HTTP on 127.0.0.1, the same decisions as the
//! Lambda ([`deprov_core::intake::accept`]), with the local engine behind it: runs start
//! in this process, future-dated leavers wait in the SQLite `schedules` table, and a
//! ticker starts due schedules and resumes delayed stages.
//!
//! Shutdown (SIGTERM or Ctrl-C): stop accepting, answer every request in flight, stop
//! the ticker, give running runs `--drain-secs` to finish. A run still working then is
//! left exactly as a crash leaves it and resumes on the next start; pending schedules stay
//! in the file and fire on the next start if their time passed meanwhile.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use clap::Args;
use deprov_core::event::MAX_EVENT_BYTES;
use deprov_core::flow::RunInput;
use deprov_core::intake::{self, Delivery, Deps, Reply, Settings};
use deprov_core::launch::{LaunchError, RunStart, RunStarter};
use deprov_core::ports::{Clock, RunStore, Secret, SecretError, SecretSource, SystemClock};
use deprov_local::{Engine, SqliteSchedules, SqliteStore};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::failure::{Failure, OK};
use crate::setup;

#[derive(Args)]
pub struct ServeArgs {
    /// Policy document (TOML) the runs are planned with.
    #[arg(long)]
    policy: PathBuf,
    /// SQLite file for runs, schedules and the audit trail.
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    /// Secrets file (TOML tables of fields); `DEPROV_SECRET_<NAME>` variables override it.
    #[arg(long, env = "DEPROV_SECRETS")]
    secrets: Option<PathBuf>,
    /// Port on 127.0.0.1 (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Secret holding the Deprov-Signature key of POST /events.
    #[arg(long, default_value = "deprov/webhook")]
    webhook_secret: String,
    /// Secret holding BambooHR's webhook private key; turns POST /sources/bamboohr on.
    #[arg(long)]
    bamboohr_secret: Option<String>,
    /// Offset of BambooHR's dates (a last day ends at midnight after it, here).
    #[arg(long, default_value = "+00:00", allow_hyphen_values = true)]
    bamboohr_utc_offset: String,
    /// Secret holding the Okta event hook's authorization value; turns /sources/okta on.
    #[arg(long)]
    okta_secret: Option<String>,
    /// Accept the unsigned POST /sources/workday feed. Only behind a proxy that
    /// authenticates the sender (mutual TLS): anyone who can reach the port could
    /// otherwise terminate anyone.
    #[arg(long)]
    trust_workday_transport: bool,
    /// How often due schedules and delayed stages are looked for, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// How long running runs may finish on shutdown before they are left to resume.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
}

/// The shared secrets source as a `SecretSource` value.
#[derive(Clone)]
struct Secrets(Arc<dyn SecretSource>);

#[async_trait]
impl SecretSource for Secrets {
    async fn secret(&self, name: &str) -> Result<Secret, SecretError> {
        self.0.secret(name).await
    }
}

/// Runs in this process: each started on its own task, one task per run at a time (a
/// duplicate delivery or a resume of a run already running is a no-op).
#[derive(Clone)]
struct LocalRuns {
    engine: Arc<Engine>,
    running: Arc<Mutex<HashSet<String>>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl LocalRuns {
    /// Spawns `work` for `run_id` unless that run is being worked on already.
    fn spawn<F>(&self, run_id: &str, work: F) -> Result<(), LaunchError>
    where
        F: std::future::Future<Output = Result<deprov_local::RunReport, deprov_local::EngineError>>
            + Send
            + 'static,
    {
        let mut running = self
            .running
            .lock()
            .map_err(|_| LaunchError("run registry lock poisoned".into()))?;
        if !running.insert(run_id.to_string()) {
            return Ok(());
        }
        let registry = Arc::clone(&self.running);
        let run_id = run_id.to_string();
        let mut tasks = self
            .tasks
            .lock()
            .map_err(|_| LaunchError("run task lock poisoned".into()))?;
        // Reap finished tasks so the set does not grow with every run ever started.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            match work.await {
                Ok(report) => tracing::info!(
                    run_id = %report.run_id,
                    status = report.status.as_str(),
                    "run advanced"
                ),
                Err(err) => tracing::error!(%run_id, error = %err, "run failed; it resumes on the next tick"),
            }
            if let Ok(mut running) = registry.lock() {
                running.remove(&run_id);
            }
        });
        Ok(())
    }

    fn is_running(&self, run_id: &str) -> bool {
        self.running
            .lock()
            .map(|running| running.contains(run_id))
            .unwrap_or(true)
    }

    /// Waits for the runs in flight, at most `limit`; says how many were left.
    async fn drain(&self, limit: Duration) -> usize {
        let mut tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(_) => return 0,
        };
        let deadline = tokio::time::Instant::now() + limit;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let left = tasks.len();
        tasks.abort_all();
        left
    }
}

#[async_trait]
impl RunStarter for LocalRuns {
    async fn start_run(&self, run_id: &str, input: &RunInput) -> Result<RunStart, LaunchError> {
        if input.dry_run {
            return Err(LaunchError(
                "a dry run is answered by the intake and never started".into(),
            ));
        }
        let engine = Arc::clone(&self.engine);
        let event = input.event.clone();
        self.spawn(run_id, async move { engine.submit(&event).await })?;
        Ok(RunStart::Started)
    }
}

type ServeDeps = Deps<SqliteStore, Secrets, LocalRuns, SqliteSchedules, SystemClock>;

/// Every path goes through the intake, so unknown ones get its JSON 404.
async fn deliver(State(deps): State<Arc<ServeDeps>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<usize>().ok());
    // A declared length over the limit is refused by the intake without reading the body.
    let limit = if declared.is_some_and(|length| length > MAX_EVENT_BYTES) {
        0
    } else {
        MAX_EVENT_BYTES + 1
    };
    let read = if limit == 0 {
        Ok(axum::body::Bytes::new())
    } else {
        axum::body::to_bytes(body, limit).await
    };
    let reply = match read {
        Ok(body) => {
            intake::accept(
                deps.as_ref(),
                Delivery {
                    method: &parts.method,
                    path: parts.uri.path(),
                    query: parts.uri.query(),
                    headers: &parts.headers,
                    body: &body,
                },
            )
            .await
        }
        // Past the limit (a chunked upload without a length), or the upload broke off:
        // the body is not read further.
        Err(_) => Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body could not be read within the limit of {MAX_EVENT_BYTES} bytes"),
        ),
    };
    let mut response = Response::new(Body::from(reply.body_bytes()));
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers() {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Starts due schedules and resumes runs whose delayed stage came due.
async fn tick(deps: &ServeDeps, store: &SqliteStore) {
    let now = SystemClock.now();
    match deps.scheduler.due(now).await {
        Ok(due) => {
            for (run_id, input) in due {
                match deps.starter.start_run(&run_id, &input).await {
                    Ok(_) => {
                        if let Err(err) = deps.scheduler.mark_started(&run_id).await {
                            tracing::error!(%run_id, error = %err, "schedule not marked started");
                        } else {
                            tracing::info!(%run_id, "scheduled run started");
                        }
                    }
                    Err(err) => tracing::error!(%run_id, error = %err, "scheduled run not started"),
                }
            }
        }
        Err(err) => tracing::error!(error = %err, "cannot read due schedules"),
    }
    match store.due_runs(now).await {
        Ok(due) => {
            for run_id in due {
                if deps.starter.is_running(&run_id) {
                    continue;
                }
                let engine = Arc::clone(&deps.starter.engine);
                let id = run_id.clone();
                if let Err(err) = deps
                    .starter
                    .spawn(&run_id, async move { engine.drive(&id).await })
                {
                    tracing::error!(%run_id, error = %err, "run not resumed");
                }
            }
        }
        Err(err) => tracing::error!(error = %err, "cannot read due runs"),
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

pub async fn serve(args: ServeArgs) -> Result<u8, Failure> {
    let policy_bytes = setup::read(&args.policy, "policy")?;
    let policy = setup::parse_policy(&args.policy, &policy_bytes)
        .map_err(|invalid| Failure::invalid(invalid.to_string()))?;
    let bamboohr_offset = intake::parse_offset(&args.bamboohr_utc_offset).ok_or_else(|| {
        Failure::invalid(format!(
            "--bamboohr-utc-offset `{}` is not an offset such as +01:00 or -05:00",
            args.bamboohr_utc_offset
        ))
    })?;
    let db = setup::db_path(args.db);
    let store = setup::open_store(&db)?;
    let schedules = SqliteSchedules::open(&db)?.auditing_in(store.clone());
    store
        .record_policy(&policy.version, &String::from_utf8_lossy(&policy_bytes))
        .await
        .map_err(|err| Failure::invalid(err.to_string()))?;
    let secrets = setup::secrets(args.secrets.as_deref())?;
    let connectors = setup::connectors(&policy, Arc::clone(&secrets))?;
    let engine = Arc::new(crate::run::quiet_engine(policy, connectors, &store));
    let runs = LocalRuns {
        engine: Arc::clone(&engine),
        running: Arc::default(),
        tasks: Arc::new(Mutex::new(JoinSet::new())),
    };
    let deps = Arc::new(Deps {
        runs: store.as_ref().clone(),
        secrets: Secrets(secrets),
        starter: runs.clone(),
        scheduler: schedules.clone(),
        clock: SystemClock,
        settings: Settings {
            webhook_secret: args.webhook_secret,
            bamboohr_secret: args.bamboohr_secret,
            bamboohr_offset,
            okta_secret: args.okta_secret,
            workday_trusted: args.trust_workday_transport,
        },
    });

    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| Failure::failed(format!("cannot listen on {address}: {err}")))?;
    let bound = listener
        .local_addr()
        .map_err(|err| Failure::failed(format!("cannot read the bound address: {err}")))?;
    println!(
        "deprov serve: listening on http://{bound} (database {})",
        db.display()
    );

    let (stop, mut stopped) = watch::channel(false);
    let ticker = {
        let deps = Arc::clone(&deps);
        let store = Arc::clone(&store);
        let period = Duration::from_millis(args.tick_ms.max(10));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => tick(&deps, &store).await,
                    _ = stopped.changed() => break,
                }
            }
        })
    };

    let app = Router::new()
        .fallback(deliver)
        .with_state(Arc::clone(&deps));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    // No new requests now, and every one in flight was answered.
    let _ = stop.send(true);
    let _ = ticker.await;
    let left = runs.drain(Duration::from_secs(args.drain_secs)).await;
    let pending = schedules
        .list()
        .await
        .map(|records| records.iter().filter(|r| r.state == "pending").count())
        .unwrap_or(0);
    drop(deps);
    drop(runs);
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown();
    }
    println!(
        "deprov serve: stopped; {pending} pending schedule(s) kept, {left} run(s) left to resume on the next start"
    );
    served.map_err(|err| Failure::failed(format!("the server failed: {err}")))?;
    Ok(OK)
}

#[derive(Args)]
pub struct SchedulesArgs {
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// `deprov schedules`: every future-dated run `deprov serve` holds — pending, started, or
/// removed (moved or cancelled) with the reason.
pub async fn schedules(args: SchedulesArgs) -> Result<u8, Failure> {
    let records = SqliteSchedules::open(&setup::db_path(args.db))?
        .list()
        .await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).unwrap_or_default()
        );
        return Ok(OK);
    }
    if records.is_empty() {
        println!("No schedules.");
    }
    for record in records {
        println!(
            "{}  {}  person {}  {}{}",
            record.effective_at.to_rfc3339(),
            record.state,
            record.person_id,
            record.run_id,
            record
                .reason
                .map(|reason| format!("  ({reason})"))
                .unwrap_or_default()
        );
    }
    Ok(OK)
}
