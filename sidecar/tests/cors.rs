//! CORS for a browser page on an allowed origin: the sidecar answers preflights itself (never
//! forwarded, no token needed) and marks every answer to an allowed origin readable by it; the
//! hub's own CORS headers never pass. Real binary, real sockets (the browser itself: tests/browser).

mod common;

use bytes::Bytes;
use civic_sidecar::contract as c;
use civic_testkit::client::{self, HttpResponse};
use civic_testkit::hub::{HubReply, sse_message};
use civic_testkit::{AuthReply, Readiness, SseStep};
use common::{Env, Setup, assert_sidecar_error};
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::json;

const APP: &str = "https://app.example";
const ALLOWED: &str = "https://app.example, loopback";
const SUPPORT: &str = "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11";

/// A preflight for `path` from `origin`; `method` and `headers` are what the page asks for.
async fn preflight(
    env: &Env,
    path: &str,
    origin: &str,
    method: Option<&str>,
    headers: Option<&str>,
) -> HttpResponse {
    let mut req = Request::builder()
        .method(Method::OPTIONS)
        .uri(path)
        .header(header::HOST, env.addr().to_string())
        .header(header::ORIGIN, origin);
    if let Some(m) = method {
        req = req.header(header::ACCESS_CONTROL_REQUEST_METHOD, m);
    }
    if let Some(h) = headers {
        req = req.header(header::ACCESS_CONTROL_REQUEST_HEADERS, h);
    }
    env.send(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

/// Every `Access-Control-*` header of a response.
fn cors_headers(r: &HttpResponse) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.starts_with("access-control-"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

/// The headers of an actual answer to an allowed `origin`.
fn assert_allowed(r: &HttpResponse, origin: &str) {
    assert_eq!(
        r.header_values("access-control-allow-origin"),
        [origin],
        "status {}: {:?}",
        r.status,
        r.headers
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("mcp-session-id, mcp-protocol-version")
    );
    assert!(
        r.header_values("vary").iter().any(|v| v.contains("Origin")),
        "Vary: Origin: {:?}",
        r.headers
    );
    assert!(r.header("access-control-allow-credentials").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_is_answered_by_the_sidecar_without_a_token() {
    // Civic Auth is down: no token can be had, and a preflight needs none.
    let env = Setup::new("cors_preflight_is_answered_by_the_sidecar_without_a_token")
        .env(c::ENV_ALLOWED_ORIGINS, ALLOWED)
        .env(c::ENV_PROFILES, format!("support={SUPPORT}"))
        .readiness(Readiness::Live)
        .start_with(|auth, _| auth.set_default(AuthReply::status(503)))
        .await
        .unwrap();

    for path in ["/hub/mcp", "/profiles/support/hub/mcp"] {
        for (origin, method) in [
            (APP, "POST"),
            (APP, "GET"),
            (APP, "DELETE"),
            ("http://localhost:5173", "POST"),
        ] {
            let r = preflight(
                &env,
                path,
                origin,
                Some(method),
                Some("Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID"),
            )
            .await;
            assert_eq!(r.status, 204, "{method} {path} from {origin}: {}", r.text());
            assert!(r.body.is_empty());
            assert_eq!(r.header_values("access-control-allow-origin"), [origin]);
            assert_eq!(
                r.header("access-control-allow-methods"),
                Some("GET, POST, DELETE")
            );
            assert_eq!(
                r.header("access-control-allow-headers"),
                Some("content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id")
            );
            assert_eq!(r.header("access-control-max-age"), Some("600"));
            assert!(
                r.header_values("vary").iter().any(|v| v.contains("Origin")),
                "{:?}",
                r.headers
            );
        }
    }

    // Only allowed headers are named: `authorization` and unknown ones are left out, so the
    // browser refuses to send them.
    let r = preflight(
        &env,
        "/hub/mcp",
        APP,
        Some("POST"),
        Some("content-type,authorization,x-custom"),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type")
    );

    // A method the proxy does not forward: 405, as for any other request.
    let r = preflight(&env, "/hub/mcp", APP, Some("PUT"), None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));
    assert!(r.header("access-control-allow-methods").is_none());

    // A disallowed origin gets the guard's 403 and no CORS header.
    for origin in ["https://evil.example", "null", "https://app.example:8443"] {
        let r = preflight(&env, "/hub/mcp", origin, Some("POST"), Some("content-type")).await;
        assert_sidecar_error(&r, 403, &["origin"]);
        assert!(cors_headers(&r).is_empty(), "{origin}: {:?}", r.headers);
    }

    // OPTIONS that is no preflight stays a 405 with Allow.
    let r = preflight(&env, "/hub/mcp", APP, None, None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));
    let bare = Request::builder()
        .method(Method::OPTIONS)
        .uri("/hub/mcp")
        .header(header::HOST, env.addr().to_string())
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = env.send(bare).await.unwrap();
    assert_eq!(r.status, 405, "no Origin, no preflight");
    assert!(cors_headers(&r).is_empty());

    // Paths the sidecar does not serve stay 404.
    for path in ["/profiles/other/hub/mcp", "/hub", "/metrics"] {
        let r = preflight(&env, path, APP, Some("POST"), None).await;
        assert_eq!(r.status, 404, "{path}");
    }

    // The actual request fails for want of a token, and the page can read why.
    let r = env
        .send(
            env.request(Method::POST)
                .header(header::ORIGIN, APP)
                .body(Full::new(Bytes::from(
                    client::jsonrpc(1, "tools/list").to_string(),
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_sidecar_error(&r, 503, &["token", "exchange", "unavailable"]);
    assert_allowed(&r, APP);

    assert_eq!(env.hub.request_count(), 0, "no preflight reaches the hub");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_an_allowed_origin_are_readable_and_hub_cors_is_dropped() {
    let env = Setup::new("cors_answers_to_an_allowed_origin_are_readable")
        .env(c::ENV_ALLOWED_ORIGINS, ALLOWED)
        .start()
        .await
        .unwrap();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});
    let result = json!({"jsonrpc": "2.0", "id": 1, "result": {"serverInfo": {"name": "hub"}}});
    // A hub that answers CORS for its own origin: none of it may reach the page.
    let hub_reply = || {
        HubReply::sse(vec![
            SseStep::Wait(std::time::Duration::from_millis(50)),
            SseStep::Event(sse_message(&result)),
        ])
        .header("mcp-session-id", "sess-cors")
        .header("vary", "Accept-Encoding")
        .header("access-control-allow-origin", "*")
        .header("access-control-allow-credentials", "true")
        .header("access-control-expose-headers", "x-hub-internal")
    };
    let post = |origin: Option<&str>| {
        let mut req = env.request(Method::POST);
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        req.body(Full::new(Bytes::from(initialize.to_string())))
            .unwrap()
    };

    // Streamed SSE to an allowed origin: the origin named, the session id exposed.
    env.hub.push(hub_reply());
    let r = env.send(post(Some(APP))).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_allowed(&r, APP);
    assert_eq!(r.header("mcp-session-id"), Some("sess-cors"));
    assert_eq!(
        r.header_values("vary"),
        ["Accept-Encoding", "Origin"],
        "the hub's Vary is kept"
    );
    assert!(r.text().contains("serverInfo"), "{}", r.text());
    let seen = env.hub.last_request().unwrap();
    assert_eq!(seen.header("origin").as_deref(), Some(APP), "Origin passes");

    // No Origin: no CORS header at all, the hub's included.
    env.hub.push(hub_reply());
    let r = env.send(post(None)).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    assert_eq!(r.header_values("vary"), ["Accept-Encoding"]);

    // The sidecar's own errors are readable too.
    let r = env
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/profiles/none/hub/mcp")
                .header(header::HOST, env.addr().to_string())
                .header(header::ORIGIN, "http://127.0.0.1:3000")
                .body(Full::new(Bytes::from("{}")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_allowed(&r, "http://127.0.0.1:3000");
    // A refused origin, or a request for another host, gets nothing.
    let r = env.send(post(Some("https://evil.example"))).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(cors_headers(&r).is_empty());
    let mut misdirected = post(Some(APP));
    misdirected
        .headers_mut()
        .insert(header::HOST, "evil.example".parse().unwrap());
    let r = env.send(misdirected).await.unwrap();
    assert_eq!(r.status, 421);
    assert!(cors_headers(&r).is_empty());

    assert_eq!(env.hub.request_count(), 2);
    env.finish();
}
