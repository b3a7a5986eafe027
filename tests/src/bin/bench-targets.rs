//! `bench-targets`: the servers `tests/bench.sh` measures against. Starts a real OpenLDAP
//! slapd and a real PostgreSQL (the test harnesses), seeds the same N accounts under each
//! given prefix in both (LDAP: one LDIF through `ldapadd`; PostgreSQL: one SQL script of
//! `CREATE ROLE … LOGIN`), prints the connection settings as shell assignments followed by
//! `# ready`, and keeps the servers up until its stdin closes.
//!
//! ```text
//! bench-targets [--accounts 2000] [--prefixes bench-,raw-]
//! ```

use std::io::Read;
use std::process::Stdio;
use std::time::Instant;

use deprov_tests::postgres::{postgres_bin_dir, quote_ident, quote_literal, Postgres};
use deprov_tests::slapd::Slapd;

/// Every seeded account's password (LDAP and PostgreSQL).
const PASSWORD: &str = "bench-Secret-1";

fn usage() -> ! {
    eprintln!("usage: bench-targets [--accounts N] [--prefixes bench-,raw-]");
    std::process::exit(2);
}

/// `value` single-quoted for a POSIX shell.
fn shell(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut accounts = 2000usize;
    let mut prefixes = vec!["bench-".to_string(), "raw-".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--accounts", Some(n)) => accounts = n.parse().unwrap_or_else(|_| usage()),
            ("--prefixes", Some(list)) => {
                prefixes = list.split(',').map(str::to_string).collect();
            }
            _ => usage(),
        }
    }

    let started = Instant::now();
    let slapd = tokio::task::spawn_blocking(Slapd::start);
    let pg = Postgres::start().await;
    let slapd = match slapd.await {
        Ok(slapd) => slapd,
        Err(err) => panic!("slapd did not start: {err}"),
    };

    let mut ldif = String::new();
    let mut sql = String::new();
    for prefix in &prefixes {
        for index in 0..accounts {
            let name = format!("{prefix}{index}");
            ldif.push_str(&format!(
                "dn: uid={name},{people}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name}\nsn: {name}\nmail: {name}@example.com\nuserPassword: {PASSWORD}\n\n",
                people = slapd.people_dn
            ));
            sql.push_str(&format!(
                "CREATE ROLE {} LOGIN PASSWORD {};\n",
                quote_ident(&name),
                quote_literal(PASSWORD)
            ));
        }
    }
    // ldapadd reading the LDIF from a file, its per-entry chatter discarded (the harness's
    // stdin-fed helper would fill the stdout pipe on thousands of entries).
    let ldif_file = match tempfile::NamedTempFile::new() {
        Ok(file) => file,
        Err(err) => panic!("cannot create a temp file: {err}"),
    };
    if let Err(err) = std::fs::write(ldif_file.path(), &ldif) {
        panic!("cannot write {}: {err}", ldif_file.path().display());
    }
    let ldap_seed = tokio::process::Command::new("/usr/bin/ldapadd")
        .args(["-x", "-H", &slapd.url, "-D", &slapd.admin_dn])
        .args(["-w", &slapd.admin_password])
        .arg("-f")
        .arg(ldif_file.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    let (status, ()) = tokio::join!(ldap_seed, pg.execute(&sql));
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("ldapadd of the seed LDIF exited with {status}"),
        Err(err) => panic!("cannot run ldapadd (install ldap-utils): {err}"),
    }
    eprintln!(
        "bench-targets: slapd and PostgreSQL up, {} accounts under {} seeded in each, in {:.1} s",
        accounts,
        prefixes.join(" and "),
        started.elapsed().as_secs_f64()
    );

    for (key, value) in [
        ("LDAP_URL", slapd.url.clone()),
        ("LDAP_BASE_DN", slapd.base_dn.clone()),
        ("LDAP_PEOPLE_DN", slapd.people_dn.clone()),
        ("LDAP_GROUPS_DN", slapd.groups_dn.clone()),
        ("LDAP_ADMIN_DN", slapd.admin_dn.clone()),
        ("LDAP_ADMIN_PASSWORD", slapd.admin_password.clone()),
        ("PG_HOST", pg.host.clone()),
        ("PG_PORT", pg.port.to_string()),
        ("PG_USER", pg.admin_user.clone()),
        ("PG_PASSWORD", pg.admin_password.clone()),
        ("PG_BIN", postgres_bin_dir().display().to_string()),
        ("ACCOUNT_PASSWORD", PASSWORD.to_string()),
    ] {
        println!("{key}={}", shell(&value));
    }
    println!("# ready");

    // Until whoever started us closes our stdin; then the servers stop as they drop.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    drop(slapd);
    drop(pg);
}
