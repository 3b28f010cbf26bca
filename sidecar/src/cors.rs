//! CORS for browser workloads on an allowed origin ([`OriginPolicy`]): the sidecar answers the
//! preflight itself (no token, nothing forwarded) and lets that origin's pages read its answers.
//! Only requests that passed the `Origin` guard get these headers: an origin outside the
//! allow-list still gets 403 and no CORS header at all. Every allowed origin's pages can now read
//! hub answers, so the allow-list is the whole decision of which pages may use the sidecar.
//!
//! The hub's own `Access-Control-*` headers never reach the workload
//! ([`crate::headers::rewrite_response`]): the hub answers for its origin, the sidecar for its.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderName, HeaderValue, ORIGIN, VARY,
};
use http::{Method, Response, StatusCode};

use crate::body::ResponseBody;
use crate::guard::OriginPolicy;

/// Methods a preflight may ask for: the ones the proxy forwards.
pub const ALLOW_METHODS: &str = "GET, POST, DELETE";

/// Request headers a browser MCP client may send (lowercase). `Authorization` is not among
/// them: the sidecar replaces it, so a page has no reason to send one.
pub const ALLOW_HEADERS: [&str; 5] = [
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// Response headers a page may read besides the safelisted ones: the session id above all,
/// which a client must send back on every later request.
pub const EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version";

/// How long a browser may cache a preflight answer, seconds.
pub const MAX_AGE_SECONDS: u32 = 600;

/// `Access-Control-Request-Private-Network` (Chrome's Private Network Access preflight).
const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
/// Its answer.
const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// The request's `Origin` when it is the only one and the policy allows it: the value CORS
/// answers echo. `None` for a request without `Origin` (no CORS at all) or a refused one.
pub fn allowed_origin(headers: &HeaderMap, policy: &OriginPolicy) -> Option<HeaderValue> {
    let mut origins = headers.get_all(ORIGIN).iter();
    let origin = origins.next()?;
    if origins.next().is_some() || !policy.allows(origin.as_bytes()) {
        return None;
    }
    Some(origin.clone())
}

/// Whether this is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. A bare `OPTIONS` is not one and stays a 405.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Whether the preflight asks for a method the proxy forwards.
pub fn preflight_method_allowed(headers: &HeaderMap) -> bool {
    headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| matches!(m.trim(), "GET" | "POST" | "DELETE"))
}

/// The 204 answer to a preflight from the allowed `origin`. `Access-Control-Allow-Headers`
/// names those of the requested headers that are allowed (all of [`ALLOW_HEADERS`] when none
/// were requested); any other requested header is left out, so the browser refuses the request.
pub fn preflight_response(origin: &HeaderValue, request: &HeaderMap) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    let allowed = allowed_request_headers(request);
    if !allowed.is_empty() {
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_str(&allowed).expect("names from ALLOW_HEADERS are a header value"),
        );
    }
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECONDS));
    // The answer depends on the requested headers too, so a cache must key on them.
    headers.insert(
        VARY,
        HeaderValue::from_static("Origin, Access-Control-Request-Headers"),
    );
    // The origin is on the allow-list, so the browser may reach this loopback address from it.
    if request
        .get(REQUEST_PRIVATE_NETWORK)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        headers.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
    }
    response
}

/// The allowed names among `Access-Control-Request-Headers`, lowercase, once each, in the
/// order of [`ALLOW_HEADERS`]; all of them when the preflight requested none.
fn allowed_request_headers(request: &HeaderMap) -> String {
    let requested: Vec<String> = request
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    ALLOW_HEADERS
        .iter()
        .filter(|name| requested.is_empty() || requested.iter().any(|r| r == *name))
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Marks an actual response (relayed or the sidecar's own) as readable by `origin`, with the
/// MCP headers a page needs exposed. `Vary: Origin` is added to any `Vary` already there.
pub fn allow_response(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    headers.append(VARY, HeaderValue::from_static("Origin"));
}

/// Removes every `Access-Control-*` header (from a hub response).
pub fn remove_cors_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::headers::test_header_map as map;

    #[test]
    fn only_a_single_allowed_origin_is_echoed() {
        let policy = OriginPolicy::parse("loopback, https://app.example").unwrap();
        let origin = |pairs: &[(&str, &str)]| allowed_origin(&map(pairs), &policy);
        assert_eq!(origin(&[]), None, "no Origin, no CORS");
        assert_eq!(
            origin(&[("origin", "https://app.example")]).unwrap(),
            "https://app.example"
        );
        assert_eq!(
            origin(&[("origin", "http://localhost:5173")]).unwrap(),
            "http://localhost:5173"
        );
        assert_eq!(origin(&[("origin", "https://evil.example")]), None);
        assert_eq!(
            origin(&[
                ("origin", "https://app.example"),
                ("origin", "https://app.example")
            ]),
            None,
            "two Origin headers are no browser's"
        );
        // `*` allows every origin, and the answer still names the one origin, never `*`.
        let any = OriginPolicy::parse("*").unwrap();
        assert_eq!(
            allowed_origin(&map(&[("origin", "https://x.example")]), &any).unwrap(),
            "https://x.example"
        );
    }

    #[test]
    fn preflight_needs_options_origin_and_request_method() {
        let full = map(&[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &full));
        assert!(!is_preflight(&Method::POST, &full));
        assert!(!is_preflight(
            &Method::OPTIONS,
            &map(&[("origin", "http://localhost:3000")])
        ));
        assert!(!is_preflight(
            &Method::OPTIONS,
            &map(&[("access-control-request-method", "POST")])
        ));
        for (method, ok) in [
            ("POST", true),
            ("GET", true),
            ("DELETE", true),
            (" DELETE ", true),
            ("PUT", false),
            ("post", false),
            ("OPTIONS", false),
            ("", false),
        ] {
            let h = map(&[("access-control-request-method", method)]);
            assert_eq!(preflight_method_allowed(&h), ok, "{method:?}");
        }
    }

    #[test]
    fn preflight_answer() {
        let origin = HeaderValue::from_static("http://127.0.0.1:5173");
        let r = preflight_response(
            &origin,
            &map(&[
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "Content-Type, authorization,MCP-Session-Id, x-custom",
                ),
                ("access-control-request-headers", "last-event-id"),
            ]),
        );
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "http://127.0.0.1:5173");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST, DELETE");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS], "content-type, mcp-session-id, last-event-id",
            "only allowed names, never authorization or an unknown one"
        );
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h[VARY].to_str().unwrap().starts_with("Origin"));
        assert!(!h.contains_key(ALLOW_PRIVATE_NETWORK));
        assert!(!h.contains_key(ACCESS_CONTROL_EXPOSE_HEADERS));

        let r = preflight_response(
            &origin,
            &map(&[
                ("access-control-request-method", "GET"),
                ("access-control-request-private-network", "true"),
            ]),
        );
        let h = r.headers();
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id"
        );
        assert_eq!(h[ALLOW_PRIVATE_NETWORK], "true");

        let r = preflight_response(
            &origin,
            &map(&[("access-control-request-headers", "authorization")]),
        );
        assert!(
            !r.headers().contains_key(ACCESS_CONTROL_ALLOW_HEADERS),
            "nothing requested is allowed"
        );
    }

    #[test]
    fn actual_responses_name_the_origin_and_expose_the_session() {
        let mut h = map(&[("vary", "Accept-Encoding"), ("mcp-session-id", "s-1")]);
        allow_response(&mut h, &HeaderValue::from_static("https://app.example"));
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(
            h[ACCESS_CONTROL_EXPOSE_HEADERS],
            "mcp-session-id, mcp-protocol-version"
        );
        assert_eq!(
            h.get_all(VARY).iter().collect::<Vec<_>>(),
            ["Accept-Encoding", "Origin"]
        );
    }

    #[test]
    fn hub_cors_headers_are_removed() {
        let mut h = map(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-secret"),
            ("Access-Control-Max-Age", "86400"),
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "s-1"),
        ]);
        remove_cors_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "mcp-session-id"]);
    }
}
