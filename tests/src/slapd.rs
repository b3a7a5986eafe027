//! A real OpenLDAP `slapd` on a loopback port, configured from scratch in a temp dir
//! (cn=config built with `slapadd -n0`): schemas core, cosine, nis, inetorgperson and a
//! small Active-Directory-like schema (`user` with `sAMAccountName`, `userAccountControl`,
//! `userPrincipalName`, `lastLogonTimestamp`; `nsAccount` with 389's `nsAccountLock`), an
//! MDB database for `dc=example,dc=com`, and the overlays ppolicy (default policy
//! honouring `pwdAccountLockedTime`), lastbind (`authTimestamp`), refint and memberof.
//!
//! The helpers talk to the server through the `ldap-utils` command-line tools, not through
//! the connector's client library, so the tests check the connector against an
//! independent view. Killed when dropped; on a panic the directory with its log is kept.
//!
//! ```ignore
//! let slapd = Slapd::start();
//! let ada = slapd.add_user("ada", "ada@example.com", "ada-password");
//! let eng = slapd.add_group("eng", &[&ada, &slapd.admin_dn]);
//! assert!(slapd.bind_as(&ada, "ada-password"));
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

const START_TIMEOUT: Duration = Duration::from_secs(15);
const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const SCHEMA_DIR: &str = "/etc/ldap/schema";
const MODULE_DIR: &str = "/usr/lib/ldap";

/// An attribute → values map of one entry, as `ldapsearch` printed it.
pub type Attrs = BTreeMap<String, Vec<String>>;

pub struct Slapd {
    /// `ldap://127.0.0.1:<port>`
    pub url: String,
    /// `dc=example,dc=com`
    pub base_dn: String,
    /// `ou=people,dc=example,dc=com`: where `add_user` puts users.
    pub people_dn: String,
    /// `ou=groups,dc=example,dc=com`: where `add_group` puts groups.
    pub groups_dn: String,
    /// The rootdn, `cn=admin,dc=example,dc=com`.
    pub admin_dn: String,
    pub admin_password: String,
    child: Child,
    dir: Option<tempfile::TempDir>,
}

/// The AD-like schema, as a cn=config schema entry.
const AD_SCHEMA: &str = "dn: cn=adlike,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: adlike
olcAttributeTypes: ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName' EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.8 NAME 'userAccountControl' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName' EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.4.1696 NAME 'lastLogonTimestamp' EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcAttributeTypes: ( 2.16.840.1.113730.3.1.610 NAME 'nsAccountLock' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
olcObjectClasses: ( 1.2.840.113556.1.5.9 NAME 'user' SUP top AUXILIARY MAY ( sAMAccountName $ userAccountControl $ userPrincipalName $ lastLogonTimestamp ) )
olcObjectClasses: ( 2.16.840.1.113730.3.2.333 NAME 'nsAccount' SUP top AUXILIARY MAY ( nsAccountLock ) )
";

fn config_ldif(dir: &Path, base_dn: &str, admin_dn: &str, admin_password: &str) -> String {
    let dir = dir.display();
    format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {dir}/slapd.pid

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb
olcModuleLoad: ppolicy
olcModuleLoad: lastbind
olcModuleLoad: refint
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file://{SCHEMA_DIR}/core.ldif

include: file://{SCHEMA_DIR}/cosine.ldif

include: file://{SCHEMA_DIR}/nis.ldif

include: file://{SCHEMA_DIR}/inetorgperson.ldif

include: file://{dir}/adlike.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {base_dn}
olcRootDN: {admin_dn}
olcRootPW: {admin_password}
olcDbDirectory: {dir}/db
olcDbMaxSize: 104857600
olcDbIndex: objectClass eq
olcDbIndex: uid,mail,cn eq
olcDbIndex: member,uniqueMember,memberUid eq
olcDbIndex: sAMAccountName,userPrincipalName eq
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by users read by * none

dn: olcOverlay={{0}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{0}}ppolicy
olcPPolicyDefault: cn=default,ou=policies,{base_dn}

dn: olcOverlay={{1}}lastbind,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcLastBindConfig
olcOverlay: {{1}}lastbind

dn: olcOverlay={{2}}refint,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRefintConfig
olcOverlay: {{2}}refint
olcRefintAttribute: member
olcRefintAttribute: uniqueMember

dn: olcOverlay={{3}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{3}}memberof
olcMemberOfRefInt: TRUE
"
    )
}

fn base_ldif(base_dn: &str) -> String {
    format!(
        "dn: {base_dn}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{base_dn}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{base_dn}
objectClass: organizationalUnit
ou: groups

dn: ou=policies,{base_dn}
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,{base_dn}
objectClass: applicationProcess
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: 0
"
    )
}

fn require(binary: &str) {
    if !Path::new(binary).is_file() {
        panic!(
            "{binary} is missing: install the Debian packages slapd and ldap-utils (tests/run.sh does)"
        );
    }
}

impl Slapd {
    /// Configures and starts a server, waiting (at most 15 s) until the admin can bind.
    /// Panics, with the log, when it cannot: this is test set-up.
    pub fn start() -> Slapd {
        require(SLAPD);
        require(SLAPADD);
        require("/usr/bin/ldapwhoami");
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(server) => return server,
                // Most likely another process took the port between probe and bind.
                Err(err) => last_error = err,
            }
        }
        panic!("slapd did not start: {last_error}");
    }

    fn try_start() -> Result<Slapd, String> {
        let base_dn = "dc=example,dc=com".to_string();
        let admin_dn = format!("cn=admin,{base_dn}");
        let admin_password = format!("admin-{:016x}", fastrand::u64(..));
        let dir = tempfile::Builder::new()
            .prefix("slapd-")
            .tempdir()
            .map_err(|err| format!("cannot create a temp dir: {err}"))?;
        let path = dir.path().to_path_buf();
        for sub in ["slapd.d", "db"] {
            std::fs::create_dir(path.join(sub)).map_err(|err| format!("mkdir {sub}: {err}"))?;
        }
        let write = |name: &str, text: &str| {
            std::fs::write(path.join(name), text).map_err(|err| format!("write {name}: {err}"))
        };
        write("adlike.ldif", AD_SCHEMA)?;
        write(
            "config.ldif",
            &config_ldif(&path, &base_dn, &admin_dn, &admin_password),
        )?;
        write("base.ldif", &base_ldif(&base_dn))?;
        let config_dir = path.join("slapd.d");
        for (db, file) in [("0", "config.ldif"), ("1", "base.ldif")] {
            let output = Command::new(SLAPADD)
                .arg("-n")
                .arg(db)
                .arg("-F")
                .arg(&config_dir)
                .arg("-l")
                .arg(path.join(file))
                .output()
                .map_err(|err| format!("cannot run slapadd: {err}"))?;
            if !output.status.success() {
                return Err(format!(
                    "slapadd -n{db} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
        }
        let port = free_port().map_err(|err| format!("no free port: {err}"))?;
        let url = format!("ldap://127.0.0.1:{port}");
        let log_path = path.join("slapd.log");
        let log = std::fs::File::create(&log_path).map_err(|err| format!("log file: {err}"))?;
        let log2 = log.try_clone().map_err(|err| format!("log file: {err}"))?;
        let child = Command::new(SLAPD)
            .arg("-h")
            .arg(format!("{url}/"))
            .arg("-F")
            .arg(&config_dir)
            .args(["-d", "256"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|err| format!("cannot run {SLAPD}: {err}"))?;
        let mut server = Slapd {
            url,
            people_dn: format!("ou=people,{base_dn}"),
            groups_dn: format!("ou=groups,{base_dn}"),
            base_dn,
            admin_dn,
            admin_password,
            child,
            dir: Some(dir),
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "slapd exited with {status}; log:\n{}",
                    server.log_text()
                ));
            }
            if server.bind_as(&server.admin_dn, &server.admin_password) {
                return Ok(server);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "slapd did not accept a bind on {} within {}s; log:\n{}",
                    server.url,
                    START_TIMEOUT.as_secs(),
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's debug log (stats level).
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|dir| dir.path().join("slapd.log"))
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.log_path()) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Runs an ldap-utils tool as the admin with `ldif` on stdin; panics on failure.
    fn tool(&self, tool: &str, args: &[&str], ldif: &str) -> String {
        let mut child = Command::new(tool)
            .args([
                "-x",
                "-H",
                &self.url,
                "-D",
                &self.admin_dn,
                "-w",
                &self.admin_password,
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {tool} (install ldap-utils): {err}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ldif.as_bytes())
                .unwrap_or_else(|err| panic!("{tool}: {err}"));
        }
        let output = child
            .wait_with_output()
            .unwrap_or_else(|err| panic!("{tool}: {err}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed ({}): {}\n{ldif}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Adds the entries of an LDIF document, as the admin.
    pub fn add_ldif(&self, ldif: &str) {
        self.tool("ldapadd", &[], ldif);
    }

    /// Applies an LDIF change document (`changetype: modify` …), as the admin.
    pub fn modify_ldif(&self, ldif: &str) {
        self.tool("ldapmodify", &[], ldif);
    }

    /// Deletes an entry, as the admin.
    pub fn delete(&self, dn: &str) {
        self.tool("ldapdelete", &[dn], "");
    }

    /// Adds an inetOrgPerson `uid=<uid>` under `people_dn`; returns its DN.
    pub fn add_user(&self, uid: &str, mail: &str, password: &str) -> String {
        let dn = format!("uid={uid},{}", self.people_dn);
        self.add_ldif(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {mail}\nuserPassword: {password}\n"
        ));
        dn
    }

    /// Adds an AD-like user (`inetOrgPerson` + `user`, `cn=<sam>`) with this
    /// `userAccountControl`; returns its DN.
    pub fn add_ad_user(
        &self,
        sam: &str,
        upn: &str,
        mail: &str,
        password: &str,
        user_account_control: u32,
    ) -> String {
        let dn = format!("cn={sam},{}", self.people_dn);
        self.add_ldif(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: user\ncn: {sam}\nsn: {sam}\nsAMAccountName: {sam}\nuserPrincipalName: {upn}\nmail: {mail}\nuserPassword: {password}\nuserAccountControl: {user_account_control}\nlastLogonTimestamp: 133485408000000000\n"
        ));
        dn
    }

    /// Adds a 389-like user (`inetOrgPerson` + `nsAccount`); returns its DN.
    pub fn add_389_user(&self, uid: &str, mail: &str, password: &str) -> String {
        let dn = format!("uid={uid},{}", self.people_dn);
        self.add_ldif(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nobjectClass: nsAccount\nuid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {mail}\nuserPassword: {password}\n"
        ));
        dn
    }

    /// Adds a groupOfNames `cn=<cn>` under `groups_dn` with these member DNs (at least one:
    /// the object class requires it); returns its DN.
    pub fn add_group(&self, cn: &str, member_dns: &[&str]) -> String {
        assert!(!member_dns.is_empty(), "a groupOfNames needs a member");
        let dn = format!("cn={cn},{}", self.groups_dn);
        let members: String = member_dns
            .iter()
            .map(|m| format!("member: {m}\n"))
            .collect();
        self.add_ldif(&format!(
            "dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n{members}"
        ));
        dn
    }

    /// Adds a posixGroup `cn=<cn>` with these `memberUid`s; returns its DN.
    pub fn add_posix_group(&self, cn: &str, gid: u32, member_uids: &[&str]) -> String {
        let dn = format!("cn={cn},{}", self.groups_dn);
        let members: String = member_uids
            .iter()
            .map(|m| format!("memberUid: {m}\n"))
            .collect();
        self.add_ldif(&format!(
            "dn: {dn}\nobjectClass: posixGroup\ncn: {cn}\ngidNumber: {gid}\n{members}"
        ));
        dn
    }

    /// Whether a real simple bind as `dn` with `password` succeeds.
    pub fn bind_as(&self, dn: &str, password: &str) -> bool {
        Command::new("/usr/bin/ldapwhoami")
            .args(["-x", "-H", &self.url, "-D", dn, "-w", password])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// The entry at `dn` with its user and operational attributes (names lower-cased),
    /// `None` when it does not exist. Read as the admin.
    pub fn entry(&self, dn: &str) -> Option<Attrs> {
        let output = Command::new("/usr/bin/ldapsearch")
            .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &self.url])
            .args(["-D", &self.admin_dn, "-w", &self.admin_password])
            .args(["-b", dn, "-s", "base", "(objectClass=*)", "*", "+"])
            .output()
            .unwrap_or_else(|err| panic!("cannot run ldapsearch (install ldap-utils): {err}"));
        match output.status.code() {
            Some(0) => Some(parse_ldif_entry(&String::from_utf8_lossy(&output.stdout))),
            Some(32) => None,
            _ => panic!(
                "ldapsearch of {dn} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// One attribute's values of the entry at `dn` (empty when absent or no entry).
    pub fn values(&self, dn: &str, attr: &str) -> Vec<String> {
        self.entry(dn)
            .and_then(|mut attrs| attrs.remove(&attr.to_ascii_lowercase()))
            .unwrap_or_default()
    }

    /// The `member` values of a group.
    pub fn members(&self, group_dn: &str) -> Vec<String> {
        self.values(group_dn, "member")
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "slapd directory kept at {} (log: slapd.log)",
                    path.display()
                );
            }
        }
    }
}

/// Parses `ldapsearch -LLL -o ldif-wrap=no` output of one entry.
fn parse_ldif_entry(text: &str) -> Attrs {
    let mut attrs = Attrs::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name == "dn" {
            continue;
        }
        let value = match rest.strip_prefix(':') {
            Some(encoded) => String::from_utf8_lossy(&base64_decode(encoded.trim())).into_owned(),
            None => rest.trim_start().to_string(),
        };
        attrs
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value);
    }
    attrs
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|&c| c == byte) else {
            continue;
        };
        buffer = (buffer << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldif_parses() {
        let attrs = parse_ldif_entry(
            "dn: uid=a,dc=x\nuid: a\nuserPassword:: YWRhcHc=\nmail: a@x\nmail: b@x\n",
        );
        assert_eq!(attrs["uid"], ["a"]);
        assert_eq!(attrs["userpassword"], ["adapw"]);
        assert_eq!(attrs["mail"], ["a@x", "b@x"]);
    }
}
