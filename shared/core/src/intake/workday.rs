//! The Workday-style feed: lifecycle events (the published event schema) pushed without
//! a payload signature. The transport authenticates the sender instead — on AWS a
//! separate API route with IAM authorization (the integration signs the request with
//! SigV4) or a custom domain with mutual TLS; locally `deprov serve
//! --trust-workday-transport`, which an operator sets only behind such a proxy. Without
//! that the route refuses everything (403): an unsigned feed on an open port would let
//! anyone terminate anyone.

use http::StatusCode;

use super::{generic, Delivery, Deps, Mapped, Reply, Route};

pub(crate) fn receive<R, S, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    delivery: Delivery<'_>,
) -> Result<Mapped, Reply> {
    if !deps.settings.workday_trusted {
        tracing::warn!("unsigned feed refused: the transport is not trusted");
        return Err(Reply::error(
            StatusCode::FORBIDDEN,
            format!(
                "{} carries no payload signature, so it is accepted only over an authenticated transport (API Gateway IAM authorization or mutual TLS; locally `deprov serve --trust-workday-transport`); send signed events to {} instead",
                Route::Workday.path(),
                Route::Events.path()
            ),
        ));
    }
    generic::parse(delivery.body)
}
