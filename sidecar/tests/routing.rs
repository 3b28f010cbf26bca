// docs/protocol.md statements 1-6 and 25: listener, routing, DNS-rebinding and Origin guards,
// upstream path and query; plus the admin listener. Real binary, real sockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use civic_sidecar::contract as c;
use civic_testkit::client::{self, raw_request};
use civic_testkit::secrets::PROFILE_ID;
use common::{Setup, bin};
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::json;

fn body() -> Full<Bytes> {
    Full::new(Bytes::from(client::jsonrpc(1, "tools/list").to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_listens_only_on_loopback() {
    let env = Setup::new("s01_listens_only_on_loopback")
        .start()
        .await
        .unwrap();
    let addr = env.addr();
    assert_eq!(
        addr.ip().to_string(),
        "127.0.0.1",
        "default proxy listener must be 127.0.0.1"
    );
    // Another loopback address and the IPv6 loopback reach a wildcard bind, never a 127.0.0.1 one.
    for other in [
        format!("127.0.0.2:{}", addr.port()),
        format!("[::1]:{}", addr.port()),
    ] {
        assert!(
            !client::can_connect(other.parse().unwrap()).await,
            "a connection to {other} must be refused: the proxy listens on 127.0.0.1 only"
        );
    }
    assert_eq!(env.call(1).await.unwrap().status, 200);
    env.finish();

    // A non-loopback listen address is a configuration error, not a wider listener.
    let out =
        civic_testkit::SidecarProcess::builder(bin(), "s01_non_loopback_listen_addr_rejected")
            .env(c::ENV_LISTEN_ADDR, "0.0.0.0:0")
            .env(c::ENV_CLIENT_ID, "x")
            .env(c::ENV_ACCESS_TOKEN_FILE, "/dev/null")
            .run_to_exit(Duration::from_secs(10))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(2), "output: {:?}", out.lines);
    assert!(
        out.lines
            .iter()
            .any(|l| l.contains(c::ENV_LISTEN_ADDR) || l.contains("listen-addr"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_ipv6_loopback_listener() {
    let env = Setup::new("s01_ipv6_loopback_listener")
        .env(c::ENV_LISTEN_ADDR, "[::1]:0")
        .start()
        .await
        .unwrap();
    let addr = env.addr();
    assert_eq!(addr.ip().to_string(), "::1");
    assert!(!client::can_connect(format!("127.0.0.1:{}", addr.port()).parse().unwrap()).await);
    assert_eq!(env.call(1).await.unwrap().status, 200);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_only_hub_mcp_is_proxied() {
    let env = Setup::new("s02_only_hub_mcp_is_proxied")
        .start()
        .await
        .unwrap();
    let before = env.hub.request_count();
    for path in [
        "/",
        "/hub",
        "/hub/mcp/",
        "/hub/mcpx",
        "/hub/mcp/extra",
        "/HUB/MCP",
        "/mcp",
        "/metrics",
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/hub/mcp",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/hub/./mcp",
        "/x/../hub/mcp",
    ] {
        for method in [Method::GET, Method::POST] {
            let req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, env.addr().to_string())
                .header(header::CONTENT_TYPE, "application/json")
                .body(body())
                .unwrap();
            let r = env.send(req).await.unwrap();
            assert_eq!(
                r.status,
                404,
                "{method} {path} must be 404, got {} {}",
                r.status,
                r.text()
            );
        }
    }
    assert_eq!(
        env.hub.request_count(),
        before,
        "no request for another path may reach the upstream"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_post_get_delete_forwarded_other_methods_405() {
    let env = Setup::new("s03_post_get_delete_forwarded_other_methods_405")
        .start()
        .await
        .unwrap();
    for (i, m) in [Method::POST, Method::GET, Method::DELETE]
        .into_iter()
        .enumerate()
    {
        let r = env
            .send(env.request(m.clone()).body(body()).unwrap())
            .await
            .unwrap();
        let seen = env.hub.last_request().expect("forwarded");
        assert_eq!(seen.method, m.as_str());
        assert_eq!(env.hub.request_count(), i + 1);
        // The fake hub's defaults: POST echo 200, GET 405 (passed through), DELETE 200.
        assert_eq!(r.status, if m == Method::GET { 405 } else { 200 }, "{m}");
    }
    let n = env.hub.request_count();
    for m in ["PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"] {
        let req = env
            .request(Method::from_bytes(m.as_bytes()).unwrap())
            .body(body())
            .unwrap();
        let r = env.send(req).await.unwrap();
        assert_eq!(r.status, 405, "{m} /hub/mcp must be 405");
    }
    assert_eq!(
        env.hub.request_count(),
        n,
        "other methods never reach the upstream"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_non_loopback_host_rejected() {
    let env = Setup::new("s04_non_loopback_host_rejected")
        .start()
        .await
        .unwrap();
    let port = env.addr().port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost.evil.example:{port}"),
        "10.0.0.1".to_string(),
        format!("[::2]:{port}"),
        "app.civic.com".to_string(),
    ] {
        // Replace the loopback Host `mcp_request` set, so only the hostile one is sent.
        let mut req = env.request(Method::POST).body(body()).unwrap();
        req.headers_mut()
            .insert(header::HOST, host.parse().unwrap());
        let r = env.send(req).await.unwrap();
        assert!(
            r.status == 421 || r.status == 403,
            "Host {host}: want 421/403, got {}",
            r.status
        );
    }
    assert_eq!(
        env.hub.request_count(),
        0,
        "rebinding attempts never reach the upstream"
    );
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
    ] {
        let mut req = env.request(Method::POST).body(body()).unwrap();
        req.headers_mut()
            .insert(header::HOST, host.parse().unwrap());
        assert_eq!(
            env.send(req).await.unwrap().status,
            200,
            "loopback Host {host} must be accepted"
        );
    }
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_foreign_origin_rejected() {
    let env = Setup::new("s05_foreign_origin_rejected")
        .start()
        .await
        .unwrap();
    for origin in [
        "http://evil.example",
        "https://app.civic.com",
        "http://127.0.0.1.evil.example:8931",
        "null",
    ] {
        let req = env
            .request(Method::POST)
            .header(header::ORIGIN, origin)
            .body(body())
            .unwrap();
        let r = env.send(req).await.unwrap();
        assert_eq!(r.status, 403, "Origin {origin} must get 403");
    }
    assert_eq!(
        env.hub.request_count(),
        0,
        "foreign origins never reach the upstream"
    );
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1:8931",
        "http://[::1]:5173",
    ] {
        let req = env
            .request(Method::POST)
            .header(header::ORIGIN, origin)
            .body(body())
            .unwrap();
        assert_eq!(
            env.send(req).await.unwrap().status,
            200,
            "loopback Origin {origin} is allowed by default"
        );
    }
    assert_eq!(
        env.call(9).await.unwrap().status,
        200,
        "no Origin is allowed"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_configured_origin_allow_list() {
    let env = Setup::new("s05_configured_origin_allow_list")
        .env(c::ENV_ALLOWED_ORIGINS, "https://agent.example.com")
        .start()
        .await
        .unwrap();
    let ok = env
        .request(Method::POST)
        .header(header::ORIGIN, "https://agent.example.com")
        .body(body())
        .unwrap();
    assert_eq!(env.send(ok).await.unwrap().status, 200);
    let bad = env
        .request(Method::POST)
        .header(header::ORIGIN, "https://other.example.com")
        .body(body())
        .unwrap();
    assert_eq!(env.send(bad).await.unwrap().status, 403);
    assert_eq!(env.hub.request_count(), 1);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_upstream_path_and_query() {
    // Not profile-locked: the query string goes through unchanged, reserved names included.
    let env = Setup::new("s06_upstream_path_and_query")
        .lock(false)
        .start()
        .await
        .unwrap();
    let query = "a=1&b=x%20y&empty=&flag&profile=support&lock=false&z=%2Fp%3Fq";
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/hub/mcp?{query}"))
        .header(header::HOST, env.addr().to_string())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body())
        .unwrap();
    assert_eq!(env.send(req).await.unwrap().status, 200);
    let seen = env.hub.last_request().unwrap();
    assert_eq!(seen.uri, format!("/hub/mcp?{query}"));
    let plain = env.call(2).await.unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(
        env.hub.last_request().unwrap().uri,
        "/hub/mcp",
        "no query added"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_hub_url_path_is_used() {
    // The configured hub URL's own path is what the upstream sees.
    let env = Setup::new("s06_hub_url_path_is_used")
        .hub_path("/tenant-a/hub/mcp")
        .start()
        .await
        .unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/hub/mcp?x=1")
        .header(header::HOST, env.addr().to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(body())
        .unwrap();
    assert_eq!(env.send(req).await.unwrap().status, 200);
    assert_eq!(env.hub.last_request().unwrap().uri, "/tenant-a/hub/mcp?x=1");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_profile_query_params_removed_or_400_when_locked() {
    let env = Setup::new("s25_profile_query_params_removed_or_400_when_locked")
        .start()
        .await
        .unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/hub/mcp?keep=1&profile=other&lock=false&accountId=acc-1&skills=a,b&tail=z")
        .header(header::HOST, env.addr().to_string())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body())
        .unwrap();
    let r = env.send(req).await.unwrap();
    match r.status {
        400 => {
            assert_eq!(
                env.hub.request_count(),
                0,
                "a 400 must not reach the upstream"
            );
            common::assert_sidecar_error(&r, 400, &["profile", "query", "lock", "parameter"]);
        }
        200 => {
            let seen = env.hub.last_request().unwrap();
            let q = seen.query.clone().unwrap_or_default();
            let names: Vec<&str> = q
                .split('&')
                .map(|kv| kv.split('=').next().unwrap_or(""))
                .collect();
            for banned in ["profile", "lock", "accountId", "skills"] {
                assert!(
                    !names.contains(&banned),
                    "{banned} must be removed from {q:?}"
                );
            }
            assert!(
                names.contains(&"keep") && names.contains(&"tail"),
                "other params kept: {q:?}"
            );
        }
        s => panic!(
            "want 400 or a forwarded request without the profile params, got {s}: {}",
            r.text()
        ),
    }
    assert_eq!(PROFILE_ID.len(), 36);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_no_proxying_on_admin() {
    let env = Setup::new("admin_endpoints_and_no_proxying_on_admin")
        .start()
        .await
        .unwrap();
    let admin = env.sidecar.admin_addr();
    assert_eq!(client::get(admin, "/livez").await.unwrap().status, 200);
    assert_eq!(client::get(admin, "/readyz").await.unwrap().status, 200);
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let m = env.sidecar.metrics().await.unwrap();
    assert!(m.contains("# TYPE"), "Prometheus text format expected");
    let n = env.hub.request_count();
    let r = client::post_mcp(
        admin,
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    )
    .await
    .unwrap();
    assert_ne!(r.status, 200, "the admin listener never proxies");
    let raw = raw_request(
        admin,
        format!("GET /hub/mcp HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(raw.status, 404);
    assert_eq!(env.hub.request_count(), n);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_first_token_in_file_mode() {
    let env = Setup::new("readyz_waits_for_first_token_in_file_mode")
        .readiness(civic_testkit::Readiness::Live)
        .start_with(|auth, _| auth.set_default(civic_testkit::AuthReply::status(503)))
        .await
        .unwrap();
    let admin = env.sidecar.admin_addr();
    assert_eq!(client::get(admin, "/livez").await.unwrap().status, 200);
    assert_ne!(
        client::get(admin, "/readyz").await.unwrap().status,
        200,
        "not ready without a token"
    );
    env.auth.set_default(civic_testkit::AuthReply::ok());
    let ready = async {
        loop {
            if client::get(admin, "/readyz")
                .await
                .map(|r| r.status)
                .unwrap_or(0)
                == 200
            {
                return;
            }
            // A workload request may be what triggers the retry.
            let _ = env.call(1).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("ready once Civic Auth recovers");
    env.finish();
}

/// docs/architecture.md §7 budget, checked loosely (debug build, loopback): the measured value is
/// printed for the issue note; the release figure belongs to the benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footprint_idle_rss_reported() {
    let env = Setup::new("footprint_idle_rss_reported")
        .start()
        .await
        .unwrap();
    for i in 0..20 {
        assert_eq!(env.call(i).await.unwrap().status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = env.sidecar.rss_kib().expect("VmRSS from /proc");
    eprintln!("idle RSS after 20 requests: {rss} KiB (debug build)");
    assert!(
        rss < 32 * 1024,
        "idle RSS {rss} KiB is far over the 8 MiB budget even for a debug build"
    );
    env.finish();
}
