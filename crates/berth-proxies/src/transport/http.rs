//! HTTP pieces both proxies use: the answer body type and the headers that
//! belong to one connection and never cross a proxy.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// The body type of every answer a proxy gives: its own (from [`full`]) or
/// an upstream's, streamed.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Headers that belong to one connection and are never forwarded (RFC 9110
/// §7.6.1, plus the `Proxy-*` ones and the non-standard `Keep-Alive` and
/// `Proxy-Connection`).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Copies end-to-end headers: hop-by-hop ones and those the `Connection`
/// header names are dropped.
pub fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_hop_by_hop(name) || named.iter().any(|n| n == name.as_str()) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret ,x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "tcp"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("content-type", "application/json"),
            ("accept", "a"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        h.append(header::ACCEPT, HeaderValue::from_static("b"));
        let out = end_to_end(&h);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "accept"]);
        let accepts: Vec<&HeaderValue> = out.get_all(header::ACCEPT).iter().collect();
        assert_eq!(accepts, ["a", "b"]);
    }

    #[test]
    fn an_end_to_end_header_is_kept_untouched() {
        for name in ["host", "authorization", "content-length", "x-forwarded-for"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[tokio::test]
    async fn full_bodies_carry_their_bytes() {
        let body = full("berth");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"berth");
    }
}
