//! [`ResponseFuture`]: the response future of [`JwtRevocation`](crate::JwtRevocation).
//!
//! A small `pin-project-lite` state machine, as tower-http writes its futures: `Inner` (the
//! request was decided in `call` and is now the inner service's), `Checking` (waiting for the
//! backend's slow path, holding the request, its claims and the ready inner service), or
//! `Rejected` (a response built in `call`). Deciding on a fast-path answer allocates nothing
//! here and awaits nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::backend::RevocationBackend;
use crate::decision::Shared;
use crate::decode::Claims;
use crate::reject::Reject;

/// What a request waiting on the backend's slow path carries until the answer comes.
pub(crate) struct Pending<Inner, ReqBody, C> {
    pub(crate) inner: Inner,
    pub(crate) request: Request<ReqBody>,
    pub(crate) claims: Claims<C>,
}

pin_project! {
    /// The response future of [`JwtRevocation`](crate::JwtRevocation).
    pub struct ResponseFuture<Inner, ReqBody, S, C, R>
    where
        Inner: Service<Request<ReqBody>>,
        S: RevocationBackend,
    {
        #[pin]
        state: State<Inner, ReqBody, S, C, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Inner, ReqBody, S, C, R>
    where
        Inner: Service<Request<ReqBody>>,
        S: RevocationBackend,
    {
        Inner {
            #[pin]
            future: Inner::Future,
        },
        Checking {
            #[pin]
            check: S::Future,
            pending: Option<Pending<Inner, ReqBody, C>>,
            shared: Arc<Shared<S, R>>,
        },
        Rejected {
            response: Option<Inner::Response>,
        },
    }
}

impl<Inner, ReqBody, S, C, R> ResponseFuture<Inner, ReqBody, S, C, R>
where
    Inner: Service<Request<ReqBody>>,
    S: RevocationBackend,
{
    pub(crate) fn inner(future: Inner::Future) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn checking(
        check: S::Future,
        pending: Pending<Inner, ReqBody, C>,
        shared: Arc<Shared<S, R>>,
    ) -> Self {
        Self {
            state: State::Checking {
                check,
                pending: Some(pending),
                shared,
            },
        }
    }

    pub(crate) fn rejected(response: Inner::Response) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<Inner, ReqBody, ResBody, S, C, R> Future for ResponseFuture<Inner, ReqBody, S, C, R>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S: RevocationBackend,
    C: Clone + Send + Sync + 'static,
    R: Reject<ResBody>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, Inner::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future } => return future.poll(cx),
                StateProj::Rejected { response } => {
                    // Taken once; a second poll after `Ready` breaks the `Future` contract.
                    let response = response.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
                StateProj::Checking {
                    check,
                    pending,
                    shared,
                } => {
                    let answer = ready!(check.poll(cx));
                    // Present until this arm completes; it is taken exactly once, right here.
                    let Pending {
                        mut inner,
                        mut request,
                        claims,
                    } = pending.take().expect("ResponseFuture polled after completion");
                    match shared.decide_slow(answer) {
                        Ok(()) => {
                            request.extensions_mut().insert(claims);
                            let future = inner.call(request);
                            state.set(State::Inner { future });
                        }
                        Err(rejection) => {
                            return Poll::Ready(Ok(shared.reject(rejection, request.headers())));
                        }
                    }
                }
            }
        }
    }
}
