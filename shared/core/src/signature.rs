//! Webhook signatures: how a sender proves a lifecycle event comes from it and is fresh.
//!
//! ```text
//! Deprov-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">
//! ```
//!
//! The HMAC covers the timestamp and the body bytes exactly as sent. A header may carry
//! several `v1=` signatures (the sender signs with the old and the new key while a key is
//! being rotated); any match passes. Comparison is constant-time (`ring::hmac::verify`).
//! The timestamp must be within [`TOLERANCE_SECS`] of the receiver's clock in either
//! direction, which bounds how long a captured request can be replayed (and the
//! `(source, event_id)` dedupe makes a replay inside that window harmless).

use ring::hmac;

/// The request header that carries the signature.
pub const HEADER: &str = "Deprov-Signature";
/// How far the signature's timestamp may be from the receiver's clock, either way.
pub const TOLERANCE_SECS: i64 = 300;
/// Most `v1=` signatures one header may carry.
pub const MAX_SIGNATURES: usize = 8;
/// Longest header accepted.
const MAX_HEADER_BYTES: usize = 1024;

const EXPECTED: &str =
    "expected \"t=<unix seconds>,v1=<64 hex digits: HMAC-SHA256 of \\\"<t>.<raw body>\\\">\"\"";

/// Why a request's signature is refused. Never carries a key or a computed signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {HEADER} header is missing; {EXPECTED}")]
    Missing,
    #[error("the {HEADER} header is malformed: {reason}; {EXPECTED}")]
    Malformed { reason: String },
    /// `skew_secs` is the receiver's time minus the signature's: positive when the
    /// signature is older than the tolerance, negative when it is from the future.
    #[error("{}", outside_tolerance(*.skew_secs))]
    OutsideTolerance { skew_secs: i64 },
    #[error("no v1 signature in the {HEADER} header matches the body; sign \"<t>.<raw body>\" (the exact bytes sent) with the shared webhook key")]
    NoMatch,
}

fn outside_tolerance(skew: i64) -> String {
    let beyond = skew
        .unsigned_abs()
        .saturating_sub(TOLERANCE_SECS.unsigned_abs());
    if skew > 0 {
        format!(
            "the signature timestamp is {} s old, {beyond} s beyond the {TOLERANCE_SECS} s tolerance; sign each delivery (and each retry) when it is sent, and check the sender's clock",
            skew.unsigned_abs()
        )
    } else {
        format!(
            "the signature timestamp is {} s in the future, {beyond} s beyond the {TOLERANCE_SECS} s tolerance; check the sender's clock",
            skew.unsigned_abs()
        )
    }
}

/// A parsed header: the timestamp as sent, its value, and the `v1` signatures.
struct Parsed<'a> {
    t_text: &'a str,
    t: i64,
    signatures: Vec<Vec<u8>>,
}

fn malformed(reason: impl Into<String>) -> SignatureError {
    SignatureError::Malformed {
        reason: reason.into(),
    }
}

fn parse(header: &str) -> Result<Parsed<'_>, SignatureError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(malformed(format!(
            "it is {} bytes; the limit is {MAX_HEADER_BYTES}",
            header.len()
        )));
    }
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((name, value)) = part.split_once('=') else {
            return Err(malformed(format!(
                "`{}` is not a name=value pair",
                truncated(part)
            )));
        };
        match name.trim() {
            "t" => {
                if t.is_some() {
                    return Err(malformed("t= appears more than once"));
                }
                let value = value.trim();
                let seconds = value
                    .parse::<i64>()
                    .ok()
                    .filter(|_| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        malformed(format!(
                            "t=`{}` is not a number of seconds since 1970",
                            truncated(value)
                        ))
                    })?;
                t = Some((value, seconds));
            }
            "v1" => {
                let value = value.trim();
                let bytes = hex::decode(value)
                    .ok()
                    .filter(|bytes| bytes.len() == 32)
                    .ok_or_else(|| malformed("a v1= value is not 64 hex digits"))?;
                if signatures.len() == MAX_SIGNATURES {
                    return Err(malformed(format!(
                        "more than {MAX_SIGNATURES} v1= signatures"
                    )));
                }
                signatures.push(bytes);
            }
            // Other schemes (a future v2) are ignored, so senders can add them first.
            _ => {}
        }
    }
    let Some((t_text, t)) = t else {
        return Err(malformed("there is no t= timestamp"));
    };
    if signatures.is_empty() {
        return Err(malformed("there is no v1= signature"));
    }
    Ok(Parsed {
        t_text,
        t,
        signatures,
    })
}

/// At most 32 characters of something the sender wrote, for an error message.
fn truncated(text: &str) -> String {
    let mut out: String = text.chars().take(32).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

fn signed_payload(t: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(t.len() + 1 + body.len());
    payload.extend_from_slice(t.as_bytes());
    payload.push(b'.');
    payload.extend_from_slice(body);
    payload
}

/// The header value for `body` sent at `t` (unix seconds), signed with `key`. For senders,
/// tests and sample requests.
pub fn sign(key: &[u8], t: i64, body: &[u8]) -> String {
    let t = t.to_string();
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        &signed_payload(&t, body),
    );
    format!("t={t},v1={}", hex::encode(tag.as_ref()))
}

/// Checks `header` (the `Deprov-Signature` value, `None` when absent) against the raw
/// `body`, the accepted `keys` (the current one, and the previous one during a rotation)
/// and the receiver's clock `now` (unix seconds). Returns the signature's timestamp.
/// Empty keys never verify anything.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    keys: &[&[u8]],
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|header| !header.is_empty())
        .ok_or(SignatureError::Missing)?;
    let parsed = parse(header)?;
    let skew = now.saturating_sub(parsed.t);
    if skew.unsigned_abs() > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance { skew_secs: skew });
    }
    let payload = signed_payload(parsed.t_text, body);
    // Every key against every signature, without stopping early: the time taken does not
    // depend on which one matched.
    let mut matched = false;
    for key in keys.iter().filter(|key| !key.is_empty()) {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        for signature in &parsed.signatures {
            matched |= hmac::verify(&key, &payload, signature).is_ok();
        }
    }
    if matched {
        Ok(parsed.t)
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"whsec-current-0123456789";
    const OLD: &[u8] = b"whsec-previous-9876543210";
    const NOW: i64 = 1_764_000_000;
    const BODY: &[u8] = br#"{"event_id":"hr-1"}"#;

    #[test]
    fn a_signed_body_verifies_and_the_header_has_the_documented_form() {
        let header = sign(KEY, NOW, BODY);
        assert!(header.starts_with(&format!("t={NOW},v1=")));
        assert_eq!(header.len(), format!("t={NOW},v1=").len() + 64);
        assert_eq!(verify(Some(&header), BODY, &[KEY], NOW), Ok(NOW));
        // Spaces after commas are tolerated.
        let spaced = header.replace(',', ", ");
        assert_eq!(verify(Some(&spaced), BODY, &[KEY], NOW), Ok(NOW));
    }

    #[test]
    fn a_known_vector_matches() {
        // HMAC-SHA256(key="key", "1.{}"), computed with Python's hmac module.
        assert_eq!(
            sign(b"key", 1, b"{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn a_tampered_body_or_timestamp_or_a_wrong_key_fails() {
        let header = sign(KEY, NOW, BODY);
        assert_eq!(
            verify(Some(&header), br#"{"event_id":"hr-2"}"#, &[KEY], NOW),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(Some(&header), BODY, &[b"another key".as_slice()], NOW),
            Err(SignatureError::NoMatch)
        );
        let moved = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(
            verify(Some(&moved), BODY, &[KEY], NOW),
            Err(SignatureError::NoMatch)
        );
        // An empty key never verifies, even a signature made with one.
        let unkeyed = sign(b"", NOW, BODY);
        assert_eq!(
            verify(Some(&unkeyed), BODY, &[b"".as_slice()], NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_fail_and_say_by_how_much() {
        let stale = sign(KEY, NOW - 301, BODY);
        let err = verify(Some(&stale), BODY, &[KEY], NOW).unwrap_err();
        assert_eq!(err, SignatureError::OutsideTolerance { skew_secs: 301 });
        assert!(err.to_string().contains("301 s old, 1 s beyond"), "{err}");

        let future = sign(KEY, NOW + 400, BODY);
        let err = verify(Some(&future), BODY, &[KEY], NOW).unwrap_err();
        assert_eq!(err, SignatureError::OutsideTolerance { skew_secs: -400 });
        assert!(err.to_string().contains("400 s in the future"), "{err}");

        // The edges of the window pass.
        for t in [NOW - 300, NOW + 300] {
            assert_eq!(verify(Some(&sign(KEY, t, BODY)), BODY, &[KEY], NOW), Ok(t));
        }
        // Absurd timestamps do not overflow.
        let far = format!("t={},v1={}", i64::MAX, "00".repeat(32));
        assert!(matches!(
            verify(Some(&far), BODY, &[KEY], i64::MIN),
            Err(SignatureError::OutsideTolerance { .. })
        ));
    }

    #[test]
    fn missing_and_malformed_headers_say_what_is_expected() {
        assert_eq!(
            verify(None, BODY, &[KEY], NOW),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("  "), BODY, &[KEY], NOW),
            Err(SignatureError::Missing)
        );
        let v1 = "ab".repeat(32);
        for (header, reason) in [
            ("sha256=abc".to_string(), "no t= timestamp"),
            (format!("v1={v1}"), "no t= timestamp"),
            (format!("t={NOW}"), "no v1= signature"),
            (format!("t=soon,v1={v1}"), "not a number"),
            (format!("t=-5,v1={v1}"), "not a number"),
            (format!("t={NOW},v1=xyz"), "64 hex digits"),
            (format!("t={NOW},v1=abcd"), "64 hex digits"),
            (format!("t={NOW},t={NOW},v1={v1}"), "more than once"),
            (format!("t={NOW};v1={v1}"), "not a number"),
            (format!("t={NOW},garbage"), "name=value"),
            (
                format!("t={NOW}{}", format!(",v1={v1}").repeat(9)),
                "more than 8",
            ),
            ("x".repeat(2000), "limit"),
        ] {
            let err = verify(Some(&header), BODY, &[KEY], NOW).unwrap_err();
            assert!(
                matches!(&err, SignatureError::Malformed { reason: r } if r.contains(reason)),
                "{header}: {err}"
            );
            assert!(err.to_string().contains("t=<unix seconds>,v1="), "{err}");
        }
        // Unknown schemes are ignored.
        let header = format!("{},v2=whatever", sign(KEY, NOW, BODY));
        assert_eq!(verify(Some(&header), BODY, &[KEY], NOW), Ok(NOW));
    }

    #[test]
    fn during_a_rotation_any_signature_with_any_accepted_key_passes() {
        let new = sign(KEY, NOW, BODY);
        let old = sign(OLD, NOW, BODY);
        let old_v1 = old.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
        // The sender signs with both keys; the receiver knows only one of them.
        let both = format!("{new},v1={old_v1}");
        assert_eq!(verify(Some(&both), BODY, &[KEY], NOW), Ok(NOW));
        assert_eq!(verify(Some(&both), BODY, &[OLD], NOW), Ok(NOW));
        // The receiver accepts the current and the previous key; the sender has one.
        assert_eq!(verify(Some(&old), BODY, &[KEY, OLD], NOW), Ok(NOW));
        assert_eq!(
            verify(Some(&old), BODY, &[KEY], NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn errors_never_contain_the_key_or_the_expected_signature() {
        let good = sign(KEY, NOW, BODY);
        let forged = format!("t={NOW},v1={}", "00".repeat(32));
        let err = verify(Some(&forged), BODY, &[KEY], NOW).unwrap_err();
        let text = err.to_string();
        let expected_v1 = good.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
        assert!(!text.contains(expected_v1));
        assert!(!text.contains(std::str::from_utf8(KEY).unwrap_or_default()));
    }
}
