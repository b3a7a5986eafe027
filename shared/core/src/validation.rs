//! Problems found in a user's input, each with where it is, so one pass reports them all.

use serde::{Deserialize, Serialize};

/// One problem in an input document: where (a JSON path such as `$.person.email`, or a
/// TOML key with its line) and why, phrased as what to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    /// A problem at a JSON path, without a line.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    /// The body is not JSON at all: where the parser stopped.
    pub fn not_json(err: &serde_json::Error) -> Problem {
        Problem {
            path: "$".into(),
            line: Some(err.line()),
            message: format!("not valid JSON: {err}"),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}, {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one document. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{what} is invalid:\n{}", render(.problems))]
pub struct Invalid {
    pub what: String,
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| format!("  - {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `name` is a safe identifier: `[A-Za-z0-9._:@-]`, 1..=max chars.
pub fn is_identifier(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

/// Glob match with `*` (any run of characters) and `?` (one character), case-insensitive,
/// for exemption patterns such as `svc-*`.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let text: Vec<char> = text.to_lowercase().chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    let (mut star, mut resume) = (None::<usize>, 0usize);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            resume = t;
            p += 1;
        } else if let Some(star_at) = star {
            p = star_at + 1;
            resume += 1;
            t = resume;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("svc-*", "SVC-backup"));
        assert!(glob_matches("*admin*", "break-glass-admin-1"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("svc-*", "ada"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("a", ""));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("hr-2026.001:x", 64));
        assert!(!is_identifier("", 64));
        assert!(!is_identifier("has space", 64));
        assert!(!is_identifier("abc", 2));
    }
}
