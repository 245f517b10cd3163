//! The demos' HTTP edge, from `tower-http`, outside the revocation layer: every request gets an
//! `x-request-id` (kept when the client sent one, echoed in the response), one span with its
//! method, path and headers, and a log line with status and latency at `info`, with the
//! credential headers (`Authorization`, `Cookie`, `Set-Cookie`, `DPoP`) shown as `Sensitive`;
//! and a handler that takes longer than [`TIMEOUT`] is answered 503.
#![allow(dead_code)]

use std::time::Duration;

use http::{HeaderName, StatusCode, header};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::classify::{GrpcErrorsAsFailures, ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

/// How long a request may take before it is answered 503.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The headers that carry credentials: redacted in every span and log line.
pub fn sensitive_headers() -> [HeaderName; 4] {
    [
        header::AUTHORIZATION,
        header::COOKIE,
        header::SET_COOKIE,
        HeaderName::from_static("dpop"),
    ]
}

/// What both stacks share, outermost first: the request's credential headers marked sensitive
/// (so the trace never sees them in clear), the request id, `trace`, the id echoed back, and the
/// response's credential headers marked inside the trace (an answer passes the layers inner to
/// outer, so the trace logs them marked).
pub type Traced<C> = Stack<
    SetSensitiveResponseHeadersLayer,
    Stack<
        PropagateRequestIdLayer,
        Stack<
            TraceLayer<C>,
            Stack<SetRequestIdLayer<MakeRequestUuid>, Stack<SetSensitiveRequestHeadersLayer, Identity>>,
        >,
    >,
>;

fn traced<C>(trace: TraceLayer<C>) -> ServiceBuilder<Traced<C>> {
    ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new(sensitive_headers()))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            trace
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO).include_headers(true))
                .on_response(DefaultOnResponse::new().level(Level::INFO).include_headers(true)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetSensitiveResponseHeadersLayer::new(sensitive_headers()))
}

/// The stack around an HTTP service (axum's `Router::layer`, or a bare hyper service): the
/// [`Traced`] layers with an HTTP trace, and the timeout innermost.
pub fn http() -> ServiceBuilder<Stack<TimeoutLayer, Traced<SharedClassifier<ServerErrorsAsFailures>>>> {
    traced(TraceLayer::new_for_http()).layer(TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        TIMEOUT,
    ))
}

/// The same for gRPC (tonic's `Server::builder().layer`): a gRPC trace, which counts error
/// statuses as failures; the timeout is tonic's own (`Server::builder().timeout`), which
/// answers with a gRPC status instead of an HTTP one. tonic applies it around the router, not
/// inside these layers, so a call it times out may be answered without an `x-request-id` and
/// logged by the trace as the cancelled call it is.
pub fn grpc() -> ServiceBuilder<Traced<SharedClassifier<GrpcErrorsAsFailures>>> {
    traced(TraceLayer::new_for_grpc())
}
