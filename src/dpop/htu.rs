//! The URI a proof's `htu` names, compared as RFC 9449 §4.3 says: query and fragment dropped,
//! scheme and host in lower case, the scheme's default port removed. The path is compared as
//! sent (no percent-encoding or dot-segment normalization), and what it is compared with is
//! built by the server from its configured origin and the request's path, never from the
//! request's `Host` header.

/// A URI as RFC 9449 §4.3 compares `htu`: query and fragment dropped, scheme and host in lower
/// case, the scheme's default port removed, an empty path as `/`. `None` for anything that is
/// not an absolute `http` or `https` URI with a host and without user information.
///
/// ```
/// use tower_jwt_revocation::dpop::normalize_uri;
///
/// assert_eq!(
///     normalize_uri("HTTPS://API.Example.com:443/me?x=1#top").as_deref(),
///     Some("https://api.example.com/me")
/// );
/// assert_eq!(normalize_uri("http://127.0.0.1:8080").as_deref(), Some("http://127.0.0.1:8080/"));
/// assert_eq!(normalize_uri("/me"), None);
/// ```
pub fn normalize_uri(uri: &str) -> Option<String> {
    let uri = uri.split('#').next().unwrap_or_default();
    let uri = uri.split('?').next().unwrap_or_default();
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    if authority.is_empty()
        || authority.contains('@')
        || !authority.bytes().all(|b| b.is_ascii_graphic())
        || !path.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    // `host[:port]`, the host a name, an IPv4 address or a bracketed IPv6 one, the port digits.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (inside, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (&authority[..inside.len() + 2], port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority.as_str(), None),
        },
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    let authority = match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => return None,
        Some(port) if port == &default_port[1..] => host.to_owned(),
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    Some(format!("{scheme}://{authority}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_compare_as_rfc_9449_says() {
        let same = [
            ("https://a.example/x", "https://a.example/x"),
            ("https://A.EXAMPLE/x", "https://a.example/x"),
            ("HTTPS://a.example:443/x?q=1", "https://a.example/x"),
            ("http://a.example:80/x#f", "http://a.example/x"),
            ("http://a.example:8080", "http://a.example:8080/"),
            ("http://[::1]:3000/me", "http://[::1]:3000/me"),
        ];
        for (input, normal) in same {
            assert_eq!(normalize_uri(input).as_deref(), Some(normal), "{input}");
        }
        for bad in [
            "ftp://a.example/",
            "https://",
            "https:///x",
            "https://user@a.example/",
            "a.example/x",
            "https://a.example:/x",
            "https://a b/x",
            "https://a.example/x y",
            "https://a.example:443:443/x",
            "https://a.example:x/",
            "http://[::1]x/",
            "http://[]:80/",
        ] {
            assert_eq!(normalize_uri(bad), None, "{bad}");
        }
        // The path is compared as sent: case and encoding matter there.
        assert_ne!(
            normalize_uri("https://a.example/Me"),
            normalize_uri("https://a.example/me")
        );
    }
}
