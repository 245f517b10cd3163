//! [`ResponseFuture`]: the response future of [`JwtRevocation`](crate::JwtRevocation).
//!
//! A small `pin-project-lite` state machine, as tower-http writes its futures: `Inner` (the
//! request was decided in `call` and is now the inner service's), `Checking` (waiting for the
//! backend's slow path, holding the request, its claims and the ready inner service),
//! `AwaitingKeys` (the token named a key the identity provider's set lacks, and a fetch of the
//! set is in flight: verify again when it ends), or `Rejected` (a response built in `call`).
//! Deciding on a fast-path answer allocates nothing here and awaits nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use serde::de::DeserializeOwned;

use crate::backend::RevocationBackend;
use crate::bearer::request_credentials;
use crate::decision::Shared;
use crate::dpop::Unrecorded;
use crate::reject::{Reject, Rejection};
use crate::scope::ClaimsCheck;
use crate::verify::token_cache::TokenCache;
use crate::verify::{Claims, KeyWait, Unverified};

/// What a request waiting on the backend's slow path carries until the answer comes.
pub(crate) struct Pending<Inner, ReqBody, C> {
    pub(crate) inner: Inner,
    pub(crate) request: Request<ReqBody>,
    pub(crate) claims: Arc<Claims<C>>,
    /// The claims predicate, run once the token is known not to be revoked.
    pub(crate) check: Option<ClaimsCheck<C>>,
    /// The DPoP proof, recorded in the replay window if the request is admitted.
    pub(crate) proof: Option<Unrecorded>,
}

/// What a request waiting for the key set carries until the fetch ends.
pub(crate) struct KeyPending<Inner, ReqBody, C> {
    pub(crate) inner: Inner,
    pub(crate) request: Request<ReqBody>,
    pub(crate) check: Option<ClaimsCheck<C>>,
    pub(crate) cache: Option<Arc<TokenCache<C>>>,
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
        AwaitingKeys {
            wait: KeyWait,
            unverified: Option<KeyPending<Inner, ReqBody, C>>,
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

    pub(crate) fn awaiting_keys(
        wait: KeyWait,
        unverified: KeyPending<Inner, ReqBody, C>,
        shared: Arc<Shared<S, R>>,
    ) -> Self {
        Self {
            state: State::AwaitingKeys {
                wait,
                unverified: Some(unverified),
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
    C: DeserializeOwned + Clone + Send + Sync + 'static,
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
                        request,
                        claims,
                        check,
                        proof,
                    } = pending.take().expect("ResponseFuture polled after completion");
                    let decision = shared.decide_slow(answer, &claims, check.as_ref(), proof);
                    match admit(decision, &mut inner, request, claims, shared) {
                        Ok(future) => state.set(State::Inner { future }),
                        Err(response) => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::AwaitingKeys {
                    wait,
                    unverified,
                    shared,
                } => {
                    ready!(wait.as_mut().poll(cx));
                    let KeyPending {
                        mut inner,
                        request,
                        check,
                        cache,
                    } = unverified.take().expect("ResponseFuture polled after completion");
                    let shared = Arc::clone(shared);
                    // The token was read from these headers in `call`; read again, it is the same.
                    let credentials = match request_credentials(
                        request.headers(),
                        shared.cookie.as_deref(),
                        shared.max_token_len,
                        shared.dpop.is_some(),
                    ) {
                        Ok(Some(credentials)) => Ok(credentials),
                        _ => Err(Unverified::Invalid(crate::InvalidToken::Malformed)),
                    };
                    let verified = credentials.and_then(|credentials| {
                        let claims = shared.verify(cache.as_deref(), credentials.token, false)?;
                        Ok((claims, credentials))
                    });
                    let (claims, proof) = match verified {
                        Ok((claims, credentials)) => match shared.confirm(&claims, credentials, &request) {
                            Ok(proof) => (claims, proof),
                            Err(rejection) => {
                                return Poll::Ready(Ok(shared.reject(rejection, request.headers())));
                            }
                        },
                        Err(unverified) => {
                            let rejection = match unverified {
                                Unverified::Invalid(invalid) => Rejection::Invalid(invalid),
                                Unverified::KeysUnavailable | Unverified::Wait(_) => {
                                    Rejection::KeysUnavailable
                                }
                            };
                            return Poll::Ready(Ok(shared.reject(rejection, request.headers())));
                        }
                    };
                    match shared.backend.try_check(&claims.facts()) {
                        Some(answer) => {
                            let decision = shared.decide(answer, &claims, check.as_ref(), proof);
                            match admit(decision, &mut inner, request, claims, &shared) {
                                Ok(future) => state.set(State::Inner { future }),
                                Err(response) => return Poll::Ready(Ok(response)),
                            }
                        }
                        None => {
                            shared.count_slow_check();
                            let lookup = shared.backend.check(&claims.facts());
                            state.set(State::Checking {
                                check: lookup,
                                pending: Some(Pending {
                                    inner,
                                    request,
                                    claims,
                                    check,
                                    proof,
                                }),
                                shared,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// The end of a decision made in the future: the request goes to the (ready) inner service with
/// its claims, or is answered with the rejection.
fn admit<Inner, ReqBody, ResBody, S, C, R>(
    decision: Result<(), Rejection>,
    inner: &mut Inner,
    mut request: Request<ReqBody>,
    claims: Arc<Claims<C>>,
    shared: &Shared<S, R>,
) -> Result<Inner::Future, Response<ResBody>>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: Clone + Send + Sync + 'static,
    R: Reject<ResBody>,
    ResBody: Default,
{
    match decision {
        Ok(()) => {
            request.extensions_mut().insert(claims);
            Ok(inner.call(request))
        }
        Err(rejection) => Err(shared.reject(rejection, request.headers())),
    }
}
