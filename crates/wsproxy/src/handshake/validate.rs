//! Validation of a claimed handshake: what a backend would refuse, refused
//! first, so that a broken request never reaches one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue};

use crate::opening::{SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};

/// Why a handshake was refused before any backend was contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// No `Host` header on an HTTP/1.1 request (RFC 9112 §3.2).
    MissingHost,
    /// More than one `Host` header (RFC 9112 §3.2).
    RepeatedHost,
    /// A `Host` that is not a valid `host[:port]` (RFC 9112 §3.2).
    BadHost,
    /// No `Sec-WebSocket-Key`.
    MissingKey,
    /// More than one `Sec-WebSocket-Key`.
    RepeatedKey,
    /// A key that is not base64 of 16 bytes.
    MalformedKey,
    /// `Sec-WebSocket-Version` missing or not 13.
    UnsupportedVersion,
    /// A handshake that announces a request body.
    UnexpectedBody,
}

impl Invalid {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Invalid::MissingHost => "missing Host header",
            Invalid::RepeatedHost => "more than one Host header",
            Invalid::BadHost => "invalid Host header",
            Invalid::MissingKey => "missing Sec-WebSocket-Key",
            Invalid::RepeatedKey => "more than one Sec-WebSocket-Key",
            Invalid::MalformedKey => "Sec-WebSocket-Key is not base64 of 16 bytes",
            Invalid::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            Invalid::UnexpectedBody => "a WebSocket handshake must not have a body",
        }
    }
}

/// Check the headers of an HTTP/2 handshake (RFC 8441 §5: no key, no
/// accept; the version is still 13). Also the version check of
/// [`validate`].
pub(crate) fn validate_http2(headers: &HeaderMap) -> Result<(), Invalid> {
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii() == b"13" => Ok(()),
        _ => Err(Invalid::UnsupportedVersion),
    }
}

/// Check the headers of an HTTP/1.1 handshake; returns the client's key
/// on success.
///
/// `Host` first: RFC 9112 §3.2 requires `400` for an HTTP/1.1 request
/// without one, with more than one, or with an invalid one (nginx answers
/// the same), and a backend chosen by `Host` must not be left to guess.
pub(crate) fn validate(headers: &HeaderMap) -> Result<HeaderValue, Invalid> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => return Err(Invalid::MissingHost),
        (Some(_), Some(_)) => return Err(Invalid::RepeatedHost),
        (Some(host), None) if !is_valid_host(host) => return Err(Invalid::BadHost),
        (Some(_), None) => {}
    }
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key,
        (None, _) => return Err(Invalid::MissingKey),
        (Some(_), Some(_)) => return Err(Invalid::RepeatedKey),
    };
    let decoded_len = STANDARD
        .decode(key.as_bytes().trim_ascii())
        .map(|k| k.len())
        .unwrap_or(0);
    if decoded_len != 16 {
        return Err(Invalid::MalformedKey);
    }
    validate_http2(headers)?;
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0");
    if has_body {
        return Err(Invalid::UnexpectedBody);
    }
    Ok(key.clone())
}

/// Whether `host` is `uri-host [ ":" port ]` (RFC 9112 §3.2): an
/// authority without user information. (An empty `Host` is allowed by the
/// RFC for targets without an authority, which a WebSocket URI always has.)
fn is_valid_host(host: &HeaderValue) -> bool {
    let host = host.as_bytes();
    if host.is_empty() || host.contains(&b'@') {
        return false;
    }
    // `Authority` parses a port lazily: one that is there must be a number.
    http::uri::Authority::try_from(host).is_ok_and(|authority| {
        authority.host().len() == authority.as_str().len() || authority.port_u16().is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "http2")]
    use crate::opening::is_handshake;
    #[cfg(feature = "http2")]
    use http::{Request, Version};

    #[cfg(feature = "http2")]
    #[test]
    fn http2_extended_connect_is_detected_for_websocket_only() {
        let connect = |protocol: Option<&'static str>, version: Version| {
            let mut req = Request::connect("http://a/chat").body(()).unwrap();
            *req.version_mut() = version;
            if let Some(p) = protocol {
                req.extensions_mut()
                    .insert(hyper::ext::Protocol::from_static(p));
            }
            req
        };
        assert!(is_handshake(&connect(Some("websocket"), Version::HTTP_2)));
        assert!(is_handshake(&connect(Some("WebSocket"), Version::HTTP_2)));
        assert!(!is_handshake(&connect(
            Some("connect-udp"),
            Version::HTTP_2
        )));
        assert!(!is_handshake(&connect(None, Version::HTTP_2)));
        assert!(!is_handshake(&connect(Some("websocket"), Version::HTTP_11)));
        let ok = headers(&[("sec-websocket-version", "13")]);
        assert_eq!(validate_http2(&ok), Ok(()));
        for bad in [&[][..], &[("sec-websocket-version", "8")]] {
            assert_eq!(
                validate_http2(&headers(bad)),
                Err(Invalid::UnsupportedVersion)
            );
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    /// `pairs` with a valid `Host` in front.
    fn with_host(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = headers(&[("host", "example.com:8080")]);
        map.extend(headers(pairs));
        map
    }

    #[test]
    fn host_must_be_present_once_and_valid() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let rest = [("sec-websocket-key", key), ("sec-websocket-version", "13")];
        assert!(validate(&with_host(&rest)).is_ok());
        assert_eq!(validate(&headers(&rest)), Err(Invalid::MissingHost));
        let mut twice = with_host(&rest);
        twice.append(HOST, HeaderValue::from_static("example.com"));
        assert_eq!(validate(&twice), Err(Invalid::RepeatedHost));
        for bad in [
            "",
            "user@example.com",
            "exa mple.com",
            "example.com:http",
            "a/b",
        ] {
            let mut map = headers(&rest);
            map.insert(HOST, HeaderValue::from_str(bad).unwrap());
            assert_eq!(validate(&map), Err(Invalid::BadHost), "{bad:?}");
        }
        for good in [
            "example.com",
            "[::1]:8080",
            "127.0.0.1",
            "xn--bcher-kva.example",
        ] {
            let mut map = headers(&rest);
            map.insert(HOST, HeaderValue::from_str(good).unwrap());
            assert!(validate(&map).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn validation() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert!(
            validate(&with_host(&[
                ("sec-websocket-key", key),
                ("sec-websocket-version", "13")
            ]))
            .is_ok()
        );
        assert_eq!(
            validate(&with_host(&[("sec-websocket-version", "13")])),
            Err(Invalid::MissingKey)
        );
        assert_eq!(
            validate(&with_host(&[
                ("sec-websocket-key", key),
                ("sec-websocket-key", key),
                ("sec-websocket-version", "13")
            ])),
            Err(Invalid::RepeatedKey)
        );
        assert_eq!(
            Invalid::RepeatedKey.as_str(),
            "more than one Sec-WebSocket-Key"
        );
        assert_eq!(
            validate(&with_host(&[
                ("sec-websocket-key", "c2hvcnQ="),
                ("sec-websocket-version", "13")
            ])),
            Err(Invalid::MalformedKey)
        );
        assert_eq!(
            validate(&with_host(&[
                ("sec-websocket-key", "not base64!"),
                ("sec-websocket-version", "13")
            ])),
            Err(Invalid::MalformedKey)
        );
        assert_eq!(
            validate(&with_host(&[
                ("sec-websocket-key", key),
                ("sec-websocket-version", "8")
            ])),
            Err(Invalid::UnsupportedVersion)
        );
        assert_eq!(
            validate(&with_host(&[("sec-websocket-key", key)])),
            Err(Invalid::UnsupportedVersion)
        );
        assert_eq!(
            validate(&with_host(&[
                ("sec-websocket-key", key),
                ("sec-websocket-version", "13"),
                ("content-length", "5")
            ])),
            Err(Invalid::UnexpectedBody)
        );
    }
}
