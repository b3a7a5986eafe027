//! Human durations in policies (`30d`, `12h`, `90s`), serialized back the same way.

use std::time::Duration;

/// Parses `30d`, `12h`, `15m`, `90s`, `1d 12h`. Errors say what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("`{text}` is not a duration ({err}); write e.g. \"30d\", \"12h\", \"90s\"")
    })
}

/// The inverse of [`parse`], for messages and plans.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_policy_durations() {
        assert_eq!(super::parse("30d").map(|d| d.as_secs()), Ok(30 * 86_400));
        assert_eq!(super::parse(" 90s ").map(|d| d.as_secs()), Ok(90));
        assert!(super::parse("soon").unwrap_err().contains("\"30d\""));
    }
}
