//! The manual: one page per topic, each example on it a doctest. Start with [`usage`]; the
//! crate's front page shows the request path in order.
//!
//! | page | what it covers |
//! |---|---|
//! | [`usage`] | mounting the layer in axum, tonic and bare hyper; reading claims; revoking |
//! | [`demo`] | the two commands, the demo server's environment and routes |
//! | [`keys`] | keys from an identity provider: discovery, JWKS refresh, several issuers, scopes |
//! | [`receivers`] | OIDC Back-Channel Logout and Shared Signals receivers, keying by issuer |
//! | [`dpop`] | sender-constrained tokens (DPoP, RFC 9449) and protected-resource metadata (RFC 9728) |
//! | [`postgres`] | the durable ledger: tables, migrations, the change feed, PgBouncer |
//! | [`cache`] | the cache tier and its consistency model: lookup and mirror mode |
//! | [`fleets`] | fan-out on NATS JetStream: relays, instances, staleness, which feed to use |
//! | [`sessions`] | refresh-token sessions whose end is a session revocation |
//! | [`trade_offs`] | failure policy, tokens without `jti`, cutoffs, clock skew, the verified-token cache |
//! | [`operations`] | metrics, logs and the responses the layer writes |
//! | [`features`] | feature flags and crypto backends |
//! | [`layout`] | which file owns what |
//! | [`testing`] | hostile input, soak tests, fuzzing |
//! | [`performance`] | what the benchmarks measure and the committed numbers |
//!
//! The pages are Markdown files beside this module (`src/docs/*.md`); lines of their examples
//! that start with `# ` are the doctests' hidden set-up, shown here only in the source.

#[doc = include_str!("usage.md")]
pub mod usage {}

#[doc = include_str!("demo.md")]
pub mod demo {}

#[doc = include_str!("keys.md")]
pub mod keys {}

#[doc = include_str!("receivers.md")]
pub mod receivers {}

#[doc = include_str!("dpop.md")]
pub mod dpop {}

#[doc = include_str!("postgres.md")]
pub mod postgres {}

#[doc = include_str!("cache.md")]
pub mod cache {}

#[doc = include_str!("fleets.md")]
pub mod fleets {}

#[doc = include_str!("sessions.md")]
pub mod sessions {}

#[doc = include_str!("trade_offs.md")]
pub mod trade_offs {}

#[doc = include_str!("operations.md")]
pub mod operations {}

#[doc = include_str!("features.md")]
pub mod features {}

#[doc = include_str!("layout.md")]
pub mod layout {}

#[doc = include_str!("testing.md")]
pub mod testing {}

#[doc = include_str!("performance.md")]
pub mod performance {}
