//! Header and query rewriting between the workload and the hub (docs/protocol.md statements 6, 7,
//! 10, 21–23, 25). Everything not named here passes byte for byte.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped in both directions, besides the ones
/// `Connection` names.
pub(crate) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Query parameters that would pick or unlock a profile at the hub; dropped when the token is
/// profile-locked (statement 25: the product decision is to remove them).
pub const PROFILE_QUERY_PARAMS: [&str; 4] = ["profile", "lock", "accountId", "skills"];

/// Removes hop-by-hop headers and every header `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// How requests to the hub are rewritten; built once.
#[derive(Debug, Clone)]
pub struct RequestRewrite {
    /// `Host` of the hub.
    pub authority: HeaderValue,
    /// Profile header name: the route's profile replaces the workload's; with no profile on
    /// the route, the workload's own choice passes through.
    pub profile_header: HeaderName,
    /// Header mode: the header carrying the subject token (consumed, never forwarded).
    pub subject_header: Option<HeaderName>,
    /// Product token appended to `User-Agent`.
    pub product: &'static str,
}

impl RequestRewrite {
    /// Turns the workload's headers into the hub's, except `Authorization` (see
    /// [`set_bearer`](Self::set_bearer)), with `profile` (the request's route's) as the only
    /// profile header. Without one the binding chose nothing, so the workload's profile header
    /// passes through: an app written for Civic's own client keeps its choice (the hub then
    /// decides, as it would for the app alone). `user_agents` remembers the last workload
    /// `User-Agent` and its rewritten value.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        profile: Option<&HeaderValue>,
        user_agents: &mut Option<(HeaderValue, HeaderValue)>,
    ) {
        remove_hop_by_hop(headers);
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::EXPECT);
        if let Some(subject) = &self.subject_header {
            headers.remove(subject);
        }
        headers.insert(header::HOST, self.authority.clone());
        if let Some(profile) = profile {
            headers.insert(self.profile_header.clone(), profile.clone());
        }
        let user_agent = match headers.get(header::USER_AGENT) {
            Some(ua) if !ua.is_empty() => match user_agents {
                // A connection keeps sending the same User-Agent: build the combined value once.
                Some((seen, combined)) if seen == ua => combined.clone(),
                _ => {
                    let mut bytes = Vec::with_capacity(ua.len() + 1 + self.product.len());
                    bytes.extend_from_slice(ua.as_bytes());
                    bytes.push(b' ');
                    bytes.extend_from_slice(self.product.as_bytes());
                    let combined = HeaderValue::from_bytes(&bytes)
                        .unwrap_or_else(|_| HeaderValue::from_static(self.product));
                    *user_agents = Some((ua.clone(), combined.clone()));
                    combined
                }
            },
            _ => HeaderValue::from_static(self.product),
        };
        headers.insert(header::USER_AGENT, user_agent);
    }

    /// Sets the one `Authorization` header.
    pub fn set_bearer(headers: &mut HeaderMap, bearer: &HeaderValue) {
        headers.insert(header::AUTHORIZATION, bearer.clone());
    }
}

/// Turns the hub's response headers into the workload's: hop-by-hop, `WWW-Authenticate` and
/// `Access-Control-*` go (the sidecar answers CORS for itself, [`crate::cors`]).
pub fn rewrite_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.remove(header::WWW_AUTHENTICATE);
    crate::cors::remove_cors_headers(headers);
}

/// The query without [`PROFILE_QUERY_PARAMS`] (names compared after percent-decoding), the
/// other parameters untouched. `Cow::Borrowed` when nothing was removed.
pub fn strip_profile_params(query: &str) -> Cow<'_, str> {
    let is_profile_param = |pair: &str| {
        let name = pair.split('=').next().unwrap_or_default();
        if name.is_empty() {
            return false;
        }
        let decoded: Cow<'_, str> = if name.contains(['%', '+']) {
            url::form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| Cow::Owned(k.into_owned()))
                .unwrap_or(Cow::Borrowed(name))
        } else {
            Cow::Borrowed(name)
        };
        PROFILE_QUERY_PARAMS.contains(&decoded.as_ref())
    };
    if !query.split('&').any(is_profile_param) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|pair| !is_profile_param(pair))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// A header map from `(name, value)` pairs, for tests.
#[cfg(test)]
pub(crate) fn test_header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite() -> RequestRewrite {
        RequestRewrite {
            authority: HeaderValue::from_static("app.civic.com"),
            profile_header: HeaderName::from_static("x-civic-profile-id"),
            subject_header: Some(HeaderName::from_static("x-user-token")),
            product: "civic-sidecar/0.1.0",
        }
    }

    const PROFILE: HeaderValue = HeaderValue::from_static("7c9e6679-7425-40de-944b-e07fc1f90ae7");

    use super::test_header_map as map;

    #[test]
    fn request_headers_statements_7_10_21_23() {
        let mut h = map(&[
            ("host", "127.0.0.1:8931"),
            ("authorization", "Bearer workload-token"),
            ("x-user-token", "Bearer user-subject"),
            ("x-civic-profile-id", "00000000-0000-0000-0000-000000000000"),
            ("x-civic-profile-id", "11111111-1111-1111-1111-111111111111"),
            ("connection", "keep-alive, X-Private-Hop"),
            ("x-private-hop", "gone"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("expect", "100-continue"),
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", "sess-1"),
            ("mcp-protocol-version", "2025-11-25"),
            ("last-event-id", "ev-9"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw==?="),
            ("mcp-param-city", "Paris"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "a=b"),
            ("baggage", "k=v"),
            ("x-unknown", "Keep  Me"),
            ("user-agent", "python-httpx2/2.16.2"),
            ("accept-encoding", "gzip"),
        ]);
        let r = rewrite();
        r.apply(&mut h, Some(&PROFILE), &mut None);
        RequestRewrite::set_bearer(&mut h, &HeaderValue::from_static("Bearer exchanged"));
        assert_eq!(
            h.get_all("authorization").iter().collect::<Vec<_>>(),
            ["Bearer exchanged"]
        );
        assert_eq!(
            h.get_all("x-civic-profile-id").iter().collect::<Vec<_>>(),
            ["7c9e6679-7425-40de-944b-e07fc1f90ae7"]
        );
        assert_eq!(h["host"], "app.civic.com");
        assert_eq!(h["user-agent"], "python-httpx2/2.16.2 civic-sidecar/0.1.0");
        // Memoized per connection; a different agent is not confused with the last one.
        let mut memo = None;
        for ua in ["a/1", "a/1", "b/2"] {
            let mut h = map(&[("user-agent", ua)]);
            r.apply(&mut h, Some(&PROFILE), &mut memo);
            assert_eq!(
                h["user-agent"],
                format!("{ua} civic-sidecar/0.1.0").as_str()
            );
        }
        for gone in [
            "x-user-token",
            "connection",
            "x-private-hop",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }
        for (kept, value) in [
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", "sess-1"),
            ("mcp-protocol-version", "2025-11-25"),
            ("last-event-id", "ev-9"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw==?="),
            ("mcp-param-city", "Paris"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "a=b"),
            ("baggage", "k=v"),
            ("x-unknown", "Keep  Me"),
            ("accept-encoding", "gzip"),
        ] {
            assert_eq!(h[kept], value, "{kept}");
        }
    }

    #[test]
    fn the_workload_chooses_the_profile_only_when_the_route_has_none() {
        let r = rewrite();
        let workload = [("x-civic-profile-id", "11111111-1111-1111-1111-111111111111")];
        let mut h = map(&workload);
        r.apply(&mut h, None, &mut None);
        assert_eq!(
            h.get_all("x-civic-profile-id").iter().collect::<Vec<_>>(),
            ["11111111-1111-1111-1111-111111111111"],
            "nothing bound: the workload's choice passes"
        );
        let mut h = map(&workload);
        r.apply(&mut h, Some(&PROFILE), &mut None);
        assert_eq!(
            h.get_all("x-civic-profile-id").iter().collect::<Vec<_>>(),
            [PROFILE],
            "bound: replaced"
        );
    }

    #[test]
    fn never_adds_protocol_version_and_sets_user_agent_when_absent() {
        let mut h = HeaderMap::new();
        let r = rewrite();
        r.apply(&mut h, None, &mut None);
        assert!(!h.contains_key("mcp-protocol-version"));
        assert!(!h.contains_key("x-civic-profile-id"));
        assert_eq!(h["user-agent"], "civic-sidecar/0.1.0");
        assert!(!h.contains_key("authorization"));
    }

    #[test]
    fn response_headers_statements_18_19_22_23() {
        let mut h = map(&[
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "sess-1"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
            ("retry-after", "3"),
            ("content-encoding", "gzip"),
            ("x-unknown", "v"),
            (
                "www-authenticate",
                "Bearer error=\"invalid_token\", resource_metadata=\"https://app.civic.com/.well-known/oauth-protected-resource/hub/mcp\"",
            ),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
        ]);
        rewrite_response(&mut h);
        assert!(!h.contains_key("www-authenticate"));
        assert!(!h.contains_key("access-control-allow-origin"));
        assert!(!h.contains_key("access-control-allow-credentials"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("transfer-encoding"));
        for kept in [
            "content-type",
            "mcp-session-id",
            "cache-control",
            "x-accel-buffering",
            "retry-after",
            "content-encoding",
            "x-unknown",
        ] {
            assert!(h.contains_key(kept), "{kept}");
        }
    }

    #[test]
    fn profile_query_params_removed_statement_25() {
        assert_eq!(strip_profile_params("a=1&b=2"), "a=1&b=2");
        assert!(matches!(strip_profile_params("a=1&b=2"), Cow::Borrowed(_)));
        assert_eq!(
            strip_profile_params("profile=x&keep=%20y&lock=false&accountId=9&skills=a,b&z"),
            "keep=%20y&z"
        );
        assert_eq!(strip_profile_params("%70rofile=x&q=1"), "q=1");
        assert_eq!(
            strip_profile_params("profiles=x&unlock=1"),
            "profiles=x&unlock=1"
        );
        assert_eq!(strip_profile_params("profile"), "");
        assert_eq!(strip_profile_params(""), "");
    }
}
