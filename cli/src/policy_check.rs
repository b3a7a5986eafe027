//! `deprov policy check`.

use std::path::Path;

use crate::failure::{Failure, OK};
use crate::setup;

pub fn check(path: &Path) -> Result<u8, Failure> {
    let bytes = setup::read(path, "policy")?;
    let policy = setup::parse_policy(path, &bytes)
        .map_err(|invalid| Failure::invalid(invalid.to_string()))?;
    let problems: Vec<String> = policy
        .systems
        .iter()
        .flat_map(|(name, config)| deprov_connectors::check(name, config))
        .collect();
    if !problems.is_empty() {
        return Err(Failure::invalid(format!(
            "policy {} is invalid:\n{}",
            path.display(),
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    println!(
        "policy {} is valid: version {}, {} systems ({}), scenarios: {}, {} roles, {} exemptions",
        path.display(),
        policy.version,
        policy.systems.len(),
        policy
            .systems
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        policy
            .scenarios
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        policy.roles.len(),
        policy.exemptions.len()
    );
    Ok(OK)
}
