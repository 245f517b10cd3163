//! What a backend answers when it cannot answer: [`StoreError`], and the boxed client-library
//! error it keeps as its source. Every backend, the cache tier and the layer's failure policy
//! speak it; it depends on nothing else in the crate.

use std::time::Duration;

/// A boxed error from a backend's client library, kept as the [`StoreError`]'s source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a backend could not answer.
///
/// Every variant means "unknown", never "not revoked": the layer hands it to its
/// [`FailurePolicy`](crate::FailurePolicy). The display text is safe to log; it never contains a
/// token or a connection secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or failed to answer (connection refused, closed, I/O).
    #[error("revocation store unavailable")]
    Unavailable(#[source] BoxError),
    /// The store did not answer within the configured time.
    #[error("revocation store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store answered with an error that is not about reachability (a query or schema error).
    #[error("revocation store query failed")]
    Query(#[source] BoxError),
    /// The arguments cannot be stored (for example an empty `jti`).
    #[error("invalid revocation: {0}")]
    InvalidInput(&'static str),
    /// The store, cache tier or task cannot work as configured: there is no Tokio runtime to
    /// run its tasks on, or a setting is out of range. Fix the code, not the database.
    #[error("revocation store misconfigured: {0}")]
    Config(&'static str),
}
