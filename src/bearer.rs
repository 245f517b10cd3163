//! Finding the bearer token in a request (RFC 6750 §2.1).
//!
//! This module owns one question: which token, if any, did the client present? It reads the
//! `Authorization` header, and, when the layer names one, a cookie ([`cookie_token`]) for
//! browser clients. A token in the query string is ignored on purpose (RFC 6750 §2.3 lets
//! servers refuse it, and URLs end up in logs). It does not look inside the token;
//! [`crate::verify`] does that.
//!
//! The grammar accepted is the RFC's: `Bearer` (any case), one or more spaces, then a `token68`
//! (`A-Z a-z 0-9 - . _ ~ + /`, then optional trailing `=`), with surrounding optional whitespace
//! allowed as HTTP allows it around any field value. Anything else that claims the `Bearer`
//! scheme is a malformed request, not "no token": a client that sent a broken credential gets a
//! `400 invalid_request` and learns why, instead of a bare challenge.
//!
//! A layer that accepts DPoP-bound tokens ([`crate::dpop`]) reads the `DPoP` scheme of RFC 9449
//! §7.1 the same way, with the same grammar ([`request_credentials`]); which scheme the client
//! used is part of the answer, because a bound token must come with `DPoP` and an unbound one
//! with `Bearer`.

use http::{HeaderMap, header::AUTHORIZATION};

/// The default upper bound on a token's length in bytes (8 KiB).
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a request's credentials are malformed (answered with `400 invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedBearer {
    /// More than one `Authorization` header: which one counts is ambiguous.
    #[error("more than one Authorization header")]
    MultipleHeaders,
    /// `Bearer` with no token after it.
    #[error("empty bearer token")]
    EmptyToken,
    /// The token or its separator has characters outside RFC 6750's `token68` grammar.
    #[error("bearer token has invalid characters")]
    InvalidCharacters,
    /// The token is longer than the configured bound.
    #[error("bearer token too long")]
    TooLong,
    /// The access-token cookie appears more than once: which one counts is ambiguous.
    #[error("more than one access-token cookie")]
    MultipleCookies,
}

/// The authorization scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer` (RFC 6750), or the access-token cookie.
    Bearer,
    /// `Authorization: DPoP` (RFC 9449 §7.1): the token is bound to a key and a proof comes with
    /// it.
    Dpop,
}

/// A request's token and the scheme it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'h> {
    /// The token.
    pub token: &'h str,
    /// How it was presented.
    pub scheme: Scheme,
}

/// Returns the bearer token of a request: `Ok(None)` when there is none (no `Authorization`
/// header, or one with another scheme such as `Basic`), `Err` when the request is malformed.
///
/// The returned slice borrows from `headers`; no allocation happens here.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
/// use tower_jwt_revocation::bearer::{bearer_token, DEFAULT_MAX_TOKEN_LEN};
///
/// let mut headers = HeaderMap::new();
/// headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc.def.ghi"));
/// assert_eq!(bearer_token(&headers, DEFAULT_MAX_TOKEN_LEN), Ok(Some("abc.def.ghi")));
/// ```
pub fn bearer_token(headers: &HeaderMap, max_len: usize) -> Result<Option<&str>, MalformedBearer> {
    Ok(authorization(headers, max_len, false)?.map(|credentials| credentials.token))
}

/// The one `Authorization` header's credentials, in the schemes asked for.
fn authorization(
    headers: &HeaderMap,
    max_len: usize,
    dpop: bool,
) -> Result<Option<Credentials<'_>>, MalformedBearer> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(MalformedBearer::MultipleHeaders);
    }
    let value = value.as_bytes();
    if dpop && let Some(token) = parse_scheme(value, b"dpop", max_len)? {
        return Ok(Some(Credentials {
            token,
            scheme: Scheme::Dpop,
        }));
    }
    Ok(parse_credentials(value, max_len)?.map(|token| Credentials {
        token,
        scheme: Scheme::Bearer,
    }))
}

/// The request's credentials: as [`request_token`], and, when `dpop` is true, also a token under
/// the `DPoP` scheme (RFC 9449 §7.1, the same `token68` grammar). With `dpop` false a `DPoP`
/// credential is another scheme: no token.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
/// use tower_jwt_revocation::bearer::{request_credentials, Scheme, DEFAULT_MAX_TOKEN_LEN};
///
/// let mut headers = HeaderMap::new();
/// headers.insert(AUTHORIZATION, HeaderValue::from_static("DPoP abc.def.ghi"));
/// let found = request_credentials(&headers, None, DEFAULT_MAX_TOKEN_LEN, true).unwrap().unwrap();
/// assert_eq!((found.token, found.scheme), ("abc.def.ghi", Scheme::Dpop));
/// assert_eq!(request_credentials(&headers, None, DEFAULT_MAX_TOKEN_LEN, false), Ok(None));
/// ```
pub fn request_credentials<'h>(
    headers: &'h HeaderMap,
    cookie: Option<&str>,
    max_len: usize,
    dpop: bool,
) -> Result<Option<Credentials<'h>>, MalformedBearer> {
    match (authorization(headers, max_len, dpop)?, cookie) {
        (None, Some(name)) if !headers.contains_key(AUTHORIZATION) => {
            Ok(cookie_token(headers, name, max_len)?.map(|token| Credentials {
                token,
                scheme: Scheme::Bearer,
            }))
        }
        (found, _) => Ok(found),
    }
}

/// Whether the request's `Authorization` header names the `DPoP` scheme (whatever follows it).
pub(crate) fn names_dpop_scheme(headers: &HeaderMap) -> bool {
    headers.get(AUTHORIZATION).is_some_and(|value| {
        let value = value.as_bytes().trim_ascii_start();
        value.len() >= 4
            && value[..4].eq_ignore_ascii_case(b"dpop")
            && value.get(4).is_none_or(|b| !is_scheme_char(*b))
    })
}

/// The request's token: the bearer token of its `Authorization` header, or, only when it has no
/// `Authorization` header at all, the value of cookie `cookie` (if named). A malformed header
/// never falls back to the cookie.
pub fn request_token<'h>(
    headers: &'h HeaderMap,
    cookie: Option<&str>,
    max_len: usize,
) -> Result<Option<&'h str>, MalformedBearer> {
    Ok(request_credentials(headers, cookie, max_len, false)?.map(|credentials| credentials.token))
}

/// Parses one `Authorization` field value. Split out so fuzzing and tests reach it with
/// arbitrary bytes, including bytes a `HeaderValue` could not hold.
pub fn parse_credentials(value: &[u8], max_len: usize) -> Result<Option<&str>, MalformedBearer> {
    parse_scheme(value, b"bearer", max_len)
}

/// One field value's token under `scheme` (lower case): `Ok(None)` for another scheme.
fn parse_scheme<'v>(
    value: &'v [u8],
    scheme: &[u8],
    max_len: usize,
) -> Result<Option<&'v str>, MalformedBearer> {
    let value = value.trim_ascii();
    let is_scheme = value.len() >= scheme.len()
        && value[..scheme.len()].eq_ignore_ascii_case(scheme)
        && value.get(scheme.len()).is_none_or(|b| !is_scheme_char(*b));
    if !is_scheme {
        // Another scheme (`Basic ...`) or garbage that names no scheme we own: for this layer
        // the request simply carries no token.
        return Ok(None);
    }
    let rest = &value[scheme.len()..];
    if rest.is_empty() {
        return Err(MalformedBearer::EmptyToken);
    }
    // RFC 6750: `"Bearer" 1*SP b64token` (and RFC 9449's `DPoP` alike); a tab or other
    // separator is not SP.
    if rest[0] != b' ' {
        return Err(MalformedBearer::InvalidCharacters);
    }
    let token = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    if token.is_empty() {
        return Err(MalformedBearer::EmptyToken);
    }
    if token.len() > max_len {
        return Err(MalformedBearer::TooLong);
    }
    if !is_token68(token) {
        return Err(MalformedBearer::InvalidCharacters);
    }
    // Checked above: every byte is ASCII, so this cannot fail; the error arm is never taken.
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| MalformedBearer::InvalidCharacters)
}

/// Returns the token in cookie `name` (from every `Cookie` header), with the same checks as a
/// bearer token: `Ok(None)` when there is none, `Err` when it is malformed or given twice.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::COOKIE};
/// use tower_jwt_revocation::bearer::{cookie_token, DEFAULT_MAX_TOKEN_LEN};
///
/// let mut headers = HeaderMap::new();
/// headers.insert(COOKIE, HeaderValue::from_static("theme=dark; access_token=abc.def.ghi"));
/// assert_eq!(cookie_token(&headers, "access_token", DEFAULT_MAX_TOKEN_LEN), Ok(Some("abc.def.ghi")));
/// ```
pub fn cookie_token<'h>(
    headers: &'h HeaderMap,
    name: &str,
    max_len: usize,
) -> Result<Option<&'h str>, MalformedBearer> {
    let mut found = None;
    for header in headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if &pair[..eq] != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(MalformedBearer::MultipleCookies);
            }
            let mut value = &pair[eq + 1..];
            // RFC 6265 allows the value in double quotes.
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            if value.is_empty() {
                return Err(MalformedBearer::EmptyToken);
            }
            if value.len() > max_len {
                return Err(MalformedBearer::TooLong);
            }
            if !is_token68(value) {
                return Err(MalformedBearer::InvalidCharacters);
            }
            found = std::str::from_utf8(value).ok();
        }
    }
    Ok(found)
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_token68(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|b| **b == b'=').count();
    // A non-short-circuiting fold over branch-free byte tests: the compiler vectorizes it, which
    // matters on every request (a JWT is hundreds of bytes; a byte-at-a-time `all()` cost about
    // 300 ns here; this takes about 85 ns).
    body_len > 0
        && token[..body_len]
            .iter()
            .fold(true, |ok, &b| ok & is_token68_byte(b))
}

#[inline(always)]
fn is_token68_byte(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter | digit | (b == b'-') | (b == b'.') | (b == b'_') | (b == b'~') | (b == b'+') | (b == b'/')
}

/// Characters that may continue an auth-scheme name (RFC 9110 `token`): `Bearerx` is another
/// scheme, not `Bearer` followed by garbage.
fn is_scheme_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const MAX: usize = 32;

    type Case = (&'static [u8], Result<Option<&'static str>, MalformedBearer>);

    #[test]
    fn credentials_parse_per_rfc_6750() {
        use MalformedBearer::*;
        let cases: &[Case] = &[
            (b"Bearer abc.def.ghi", Ok(Some("abc.def.ghi"))),
            (b"bearer abc", Ok(Some("abc"))),
            (b"BEARER abc", Ok(Some("abc"))),
            (b"BeArEr abc", Ok(Some("abc"))),
            (b"Bearer   abc", Ok(Some("abc"))),
            (b"  Bearer abc  ", Ok(Some("abc"))),
            (b"Bearer abc\t", Ok(Some("abc"))),
            (b"Bearer a-b_c~d+e/f.g==", Ok(Some("a-b_c~d+e/f.g=="))),
            (b"Bearer abc=", Ok(Some("abc="))),
            (b"Basic dXNlcjpwYXNz", Ok(None)),
            (b"Bearerabc", Ok(None)),
            (b"Digest username=x", Ok(None)),
            (b"", Ok(None)),
            (b"Bearer", Err(EmptyToken)),
            (b"Bearer ", Err(EmptyToken)),
            (b"Bearer    ", Err(EmptyToken)),
            (b"Bearer\tabc", Err(InvalidCharacters)),
            (b"Bearer,abc", Err(InvalidCharacters)),
            (b"Bearer abc def", Err(InvalidCharacters)),
            (b"Bearer abc\tdef", Err(InvalidCharacters)),
            (b"Bearer ab\"c", Err(InvalidCharacters)),
            (b"Bearer abc,", Err(InvalidCharacters)),
            (b"Bearer ===", Err(InvalidCharacters)),
            (b"Bearer a=b", Err(InvalidCharacters)),
            (b"Bearer \xffabc", Err(InvalidCharacters)),
            (b"Bearer caf\xc3\xa9", Err(InvalidCharacters)),
            (
                b"Bearer abcdefghijklmnopqrstuvwxyz012345",
                Ok(Some("abcdefghijklmnopqrstuvwxyz012345")),
            ),
            (b"Bearer abcdefghijklmnopqrstuvwxyz0123456", Err(TooLong)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_credentials(input, MAX),
                *expected,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn token68_accepts_exactly_its_alphabet() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_token68_byte(b), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn headers_need_exactly_one_authorization() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers, MAX), Ok(None));

        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&headers, MAX), Ok(Some("abc")));

        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&headers, MAX), Err(MalformedBearer::MultipleHeaders));
    }

    #[test]
    fn cookies_are_read_by_name_once() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(http::header::COOKIE, HeaderValue::from_static(v));
            }
            headers
        };
        let read =
            |values: &[&'static str]| cookie_token(&with(values), "at", MAX).map(|t| t.map(str::to_owned));
        assert_eq!(read(&["at=abc"]), Ok(Some("abc".into())));
        assert_eq!(read(&["x=1; at=abc; y=2"]), Ok(Some("abc".into())));
        assert_eq!(read(&["x=1", "at=\"abc\""]), Ok(Some("abc".into())));
        assert_eq!(read(&["x=1"]), Ok(None));
        assert_eq!(read(&["xat=abc; atx=abc"]), Ok(None));
        assert_eq!(read(&["at=abc", "at=def"]), Err(MalformedBearer::MultipleCookies));
        assert_eq!(read(&["at="]), Err(MalformedBearer::EmptyToken));
        assert_eq!(read(&["at=a b"]), Err(MalformedBearer::InvalidCharacters));
    }

    #[test]
    fn the_dpop_scheme_is_read_only_when_asked_for() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            headers
        };
        let read = |value: &'static str, dpop: bool| {
            request_credentials(&with(value), None, MAX, dpop)
                .map(|c| c.map(|c| (c.token.to_owned(), c.scheme)))
        };
        assert_eq!(read("DPoP abc", true), Ok(Some(("abc".into(), Scheme::Dpop))));
        assert_eq!(read("dpop  abc", true), Ok(Some(("abc".into(), Scheme::Dpop))));
        assert_eq!(read("Bearer abc", true), Ok(Some(("abc".into(), Scheme::Bearer))));
        assert_eq!(read("DPoP abc", false), Ok(None));
        assert_eq!(read("DPoPx abc", true), Ok(None));
        assert_eq!(read("DPoP", true), Err(MalformedBearer::EmptyToken));
        assert_eq!(read("DPoP a b", true), Err(MalformedBearer::InvalidCharacters));
        assert!(names_dpop_scheme(&with("DPoP abc")));
        assert!(names_dpop_scheme(&with("dpop")));
        assert!(!names_dpop_scheme(&with("DPoPx abc")));
        assert!(!names_dpop_scheme(&with("Bearer abc")));
    }

    #[test]
    fn another_header_with_the_token_is_not_read() {
        let mut headers = HeaderMap::new();
        headers.insert("x-authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&headers, MAX), Ok(None));
    }
}
