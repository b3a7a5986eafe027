//! The generic source: a lifecycle event signed with `Deprov-Signature` (see
//! [`crate::signature`]) with the key in `Settings::webhook_secret`.

use chrono::{DateTime, Utc};
use http::StatusCode;

use super::{header_text, source_keys, Delivery, Deps, Mapped, Reply};
use crate::event::LifecycleEvent;
use crate::ports::SecretSource;
use crate::signature;

/// The signature, before the body is even parsed; then the event.
pub(crate) async fn receive<R, S: SecretSource, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    delivery: Delivery<'_>,
    now: DateTime<Utc>,
) -> Result<Mapped, Reply> {
    let keys = source_keys(&deps.secrets, &deps.settings.webhook_secret).await?;
    let key_refs: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
    let header = header_text(delivery.headers, signature::HEADER);
    if let Err(err) = signature::verify(header, delivery.body, &key_refs, now.timestamp()) {
        tracing::warn!(reason = %err, "signature refused");
        return Err(Reply::error(StatusCode::UNAUTHORIZED, err));
    }
    parse(delivery.body)
}

/// A lifecycle event document, or a 400 listing every problem.
pub(crate) fn parse(body: &[u8]) -> Result<Mapped, Reply> {
    match LifecycleEvent::parse(body) {
        Ok(event) => Ok(Mapped {
            events: vec![event],
            ignored: Vec::new(),
        }),
        Err(invalid) => {
            tracing::warn!(problems = invalid.problems.len(), "invalid event refused");
            Err(Reply::invalid(&invalid))
        }
    }
}
