//! `deprov demo`: two demo apps speaking SCIM 2.0 on loopback, seeded with a small
//! workforce; one person terminated with the built-in policy by the real SCIM connector over
//! HTTP; the delayed delete reached on a demo clock; the audit chain verified.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use clap::Args;
use deprov_core::event::{EventKind, Person, TerminationType};
use deprov_core::ports::{Clock, SecretSource};
use deprov_core::{LifecycleEvent, Policy};
use deprov_demo::{seed, workforce, ScimProvider};
use deprov_local::LocalSecrets;

use crate::audit::verify_runs;
use crate::failure::{Failure, AUDIT_BROKEN, ESCALATED};
use crate::output;
use crate::run::{start_engine, stop_engine};
use crate::setup;

/// The built-in demo policy; `{crm_url}` and `{wiki_url}` are filled with the demo apps'
/// addresses.
const DEMO_POLICY: &str = r#"
version = "demo-1"

[systems.crm]
kind = "scim"
secret = "demo/crm"
concurrency = 4
rate_limit_per_second = 100
connection = { base_url = "{crm_url}" }

[systems.wiki]
kind = "scim"
secret = "demo/wiki"
concurrency = 4
connection = { base_url = "{wiki_url}" }

# An involuntary termination: disable now, strip groups, delete after 30 days
# (so a mistaken termination can still be undone).
[scenarios.termination]
stages = ["disable", "entitlements", "delete"]
delays = { delete = "30d" }

[[exemptions]]
account = "svc-*"
reason = "service accounts belong to the platform team"
"#;

#[derive(Args)]
pub struct DemoArgs {
    /// HR id of the person to terminate (E1001…E1012).
    #[arg(long, default_value = "E1005")]
    person: String,
    /// Where to keep the SQLite file (default: a fresh file in the temp directory).
    #[arg(long)]
    db: Option<PathBuf>,
}

/// Real time plus an offset the demo moves forward, to reach the delayed delete stage.
struct DemoClock {
    offset: Mutex<chrono::Duration>,
}

impl Clock for DemoClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
            + *self
                .offset
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn random_token() -> String {
    let seed = format!(
        "{:?}{}{:?}",
        std::time::SystemTime::now(),
        std::process::id(),
        std::thread::current().id()
    );
    deprov_core::ids::sha256_hex(seed.as_bytes())[..40].to_string()
}

pub async fn demo(args: DemoArgs) -> Result<u8, Failure> {
    let person = workforce()
        .iter()
        .find(|p| p.id == args.person)
        .ok_or_else(|| {
            let ids: Vec<&str> = workforce().iter().map(|p| p.id).collect();
            Failure::invalid(format!(
                "--person {} is not in the demo workforce; choose one of {}",
                args.person,
                ids.join(", ")
            ))
        })?;

    println!(
        "deprov demo — terminating {} ({}) across two demo apps.\n",
        person.display_name, person.id
    );
    let mut providers = BTreeMap::new();
    let mut secrets = LocalSecrets::default();
    for app in ["crm", "wiki"] {
        let token = random_token();
        let provider = ScimProvider::start(app, &token).await.map_err(|err| {
            Failure::failed(format!(
                "cannot start the demo {app} app on 127.0.0.1: {err}"
            ))
        })?;
        seed(&provider, app);
        println!(
            "  demo app {app:<5} SCIM 2.0 service provider at {}",
            provider.base_url()
        );
        secrets = secrets.with(&format!("demo/{app}"), "token", &token);
        providers.insert(app, provider);
    }
    let policy_text = DEMO_POLICY
        .replace("{crm_url}", &providers["crm"].base_url())
        .replace("{wiki_url}", &providers["wiki"].base_url());
    let policy =
        Policy::parse(&policy_text).map_err(|invalid| Failure::failed(invalid.to_string()))?;
    let secrets: Arc<dyn SecretSource> = Arc::new(secrets);
    let connectors = setup::connectors(&policy, secrets)?;

    let db = match args.db {
        Some(db) => db,
        None => {
            let dir = std::env::temp_dir().join(format!("deprov-demo-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            dir.join("deprov.db")
        }
    };
    let store = setup::open_store(&db)?;
    store
        .record_policy(&policy.version, &policy_text)
        .await
        .map_err(Failure::failed)?;

    let event = LifecycleEvent {
        event_id: format!("demo-{}-{}", person.id, Utc::now().timestamp_micros()),
        source: "demo-hr".into(),
        kind: EventKind::Termination,
        termination_type: Some(TerminationType::Involuntary),
        person: Person {
            id: person.id.into(),
            email: person.email.into(),
            display_name: Some(person.display_name.into()),
            usernames: BTreeMap::new(),
            roles: person.roles.iter().map(|r| r.to_string()).collect(),
            manager_email: person.manager_email.map(str::to_string),
        },
        effective_at: Utc::now().fixed_offset(),
        reason: Some("demo: involuntary termination".into()),
        requested_by: "deprov-demo".into(),
        transfer: None,
        systems: Vec::new(),
    };

    let clock = Arc::new(DemoClock {
        offset: Mutex::new(chrono::Duration::zero()),
    });
    let (engine, printer) = start_engine(policy, connectors, Arc::clone(&store), clock.clone());
    let plan = engine.plan(&event).await;
    let plan = match plan {
        Ok(plan) => plan,
        Err(err) => {
            stop_engine(engine, printer).await;
            return Err(err.into());
        }
    };
    println!();
    output::print_plan(&plan);
    println!(
        "\nRunning (the SCIM connector calls the demo apps over HTTP and reads every change back):"
    );
    let first = engine.submit(&event).await;
    let mut code = match &first {
        Ok(report) => output::summarize(report),
        Err(_) => ESCALATED,
    };
    let first = first?;

    println!("\n⏩ Demo clock: 31 days later — the delete stage is due (`deprov resume` does this for real runs).");
    if let Ok(mut offset) = clock.offset.lock() {
        *offset = chrono::Duration::days(31);
    }
    let resumed = engine.resume_due().await;
    stop_engine(engine, printer).await;
    let mut last = first;
    for report in resumed? {
        code = code.max(output::summarize(&report));
        last = report;
    }
    println!();
    output::print_outcomes(&last.outcomes);

    println!("\nRead back independently from the demo apps:");
    for (app, provider) in &providers {
        let state = match provider.find_user_id(person.username) {
            Some(id) => match provider.user(&id) {
                Some(user) => format!("account {} exists, active = {}", id, user["active"]),
                None => "no account".into(),
            },
            None => "no account (deleted or never had one)".into(),
        };
        println!("  {app:<5} {} — {state}", person.username);
    }

    let (runs, records, broken) = verify_runs(store.as_ref(), None).await?;
    if broken.is_empty() {
        println!(
            "\nAudit chain verified: {runs} run(s), {records} records, every SHA-256 link intact."
        );
    } else {
        for problem in &broken {
            println!("BROKEN: {problem}");
        }
        code = code.max(AUDIT_BROKEN);
    }
    println!("SQLite file: {}", db.display());
    println!(
        "Try: deprov audit show --person {} --db {}   ·   deprov audit verify --db {}",
        person.id,
        db.display(),
        db.display()
    );
    for provider in providers.values() {
        provider.shutdown();
    }
    Ok(code)
}
