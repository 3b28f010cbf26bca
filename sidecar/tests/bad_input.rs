// Issue 7, bad input over a raw TCP socket: path tricks, absolute-form and CONNECT targets,
// oversized heads and bodies, request-smuggling shapes, malformed framing, and hostile
// `Host`/`Origin` values. Each gets a precise 4xx (or 5xx for protocol versions) from the
// sidecar itself and never reaches the hub; the sidecar keeps serving.
//
// Already proven elsewhere: the plain path list of statement 2 (`routing::s02_*`), methods
// (`routing::s03_*`), Host and Origin basics (`routing::s04_*`, `s05_*`), body limits with
// Content-Length and chunked (`transparency::s28_*`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use civic_testkit::client::{RawResponse, raw_request};
use common::{Env, Setup};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What the sidecar must answer.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This status; the JSON-RPC error message (sidecar-made answers) contains the text.
    Status(u16, &'static str),
    /// The connection is closed without an HTTP answer (not HTTP/1 at all).
    Closed,
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    want: Want,
}

fn case(name: &'static str, request: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        name,
        request: request.into(),
        want,
    }
}

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;

/// `POST <target>` with a loopback Host, JSON body, `Connection: close`.
fn post(target: &str, host: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    )
}

/// A request with these extra header lines (each ending in CRLF) and this raw body.
fn with_headers(host: &str, extra: &str, body: &str) -> String {
    format!(
        "POST /hub/mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra}\r\n{body}"
    )
}

/// The answer to `request` on a fresh connection; `None` if the connection closed without one.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    raw_request(addr, request, Duration::from_secs(10))
        .await
        .ok()
}

fn message(r: &RawResponse) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned())
}

/// Runs every case, each on its own connection; returns how many were rejected as wanted.
async fn run_cases(env: &Env, cases: Vec<Case>) -> usize {
    let addr = env.addr();
    let mut failures = Vec::new();
    let mut rejected = 0;
    for c in &cases {
        let before = env.hub.request_count();
        let got = exchange(addr, &c.request).await;
        let reached = env.hub.request_count() - before;
        match (c.want, &got) {
            (Want::Status(status, text), Some(r))
                if r.status == status && message(r).contains(text) && reached == 0 =>
            {
                common::assert_no_secret_in(&String::from_utf8_lossy(&r.body), c.name);
                rejected += 1;
            }
            (Want::Closed, None) if reached == 0 => rejected += 1,
            (want, Some(r)) => failures.push(format!(
                "{}: want {want:?}, got {} {:?}; reached the hub {reached} time(s)",
                c.name,
                r.status,
                message(r)
            )),
            (want, None) => failures.push(format!(
                "{}: want {want:?}, the connection closed without an answer; reached the hub {reached} time(s)",
                c.name
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not rejected as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Still serving.
    assert_eq!(env.call(99).await.unwrap().status, 200);
    rejected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_targets_never_reach_the_hub() {
    let env = Setup::new("bad_paths_and_targets_never_reach_the_hub")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let h = h.as_str();
    let nf = Want::Status(404, "not found");
    let cases = vec![
        case("dotdot after", post("/hub/mcp/../x", h), nf),
        case("dotdot before", post("/x/../hub/mcp", h), nf),
        case("trailing slash", post("/hub/mcp/", h), nf),
        case("double leading slash", post("//hub/mcp", h), nf),
        case("double inner slash", post("/hub//mcp", h), nf),
        case("encoded slash", post("/hub%2Fmcp", h), nf),
        case("encoded slash lower", post("/hub%2fmcp", h), nf),
        case("encoded dotdot", post("/hub/mcp%2F..%2F..%2Fadmin", h), nf),
        case("encoded letter", post("/hub/%6Dcp", h), nf),
        case("encoded dot segment", post("/hub/%2e/mcp", h), nf),
        case("backslash", post("/hub\\mcp", h), nf),
        case("matrix param", post("/hub/mcp;x=1", h), nf),
        case("upper case", post("/HUB/MCP", h), nf),
        case(
            "well-known metadata",
            post("/.well-known/oauth-protected-resource/hub/mcp", h),
            nf,
        ),
        case(
            "asterisk form",
            "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            nf,
        ),
        case(
            "absolute-form to another host",
            post("http://evil.example/hub/mcp", h),
            Want::Status(421, "misdirected"),
        ),
        case(
            "absolute-form https to the real hub",
            post("https://app.civic.com/hub/mcp", h),
            Want::Status(421, "misdirected"),
        ),
        case(
            "absolute-form to another host, other path",
            post("http://evil.example/x", h),
            Want::Status(421, "misdirected"),
        ),
        case(
            "CONNECT to another host",
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            Want::Status(421, "misdirected"),
        ),
        case(
            "CONNECT with a loopback Host",
            format!("CONNECT app.civic.com:443 HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            Want::Status(421, "misdirected"),
        ),
        case(
            "TRACE",
            format!("TRACE /hub/mcp HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
            Want::Status(405, "method not allowed"),
        ),
        case(
            "lower-case method",
            format!(
                "post /hub/mcp HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            Want::Status(405, "method not allowed"),
        ),
        case(
            "NUL in target",
            post("/hub/mcp\0", h),
            Want::Status(400, ""),
        ),
        case(
            "space in target",
            post("/hub/mcp x", h),
            Want::Status(400, ""),
        ),
    ];
    let n = cases.len();
    let rejected = run_cases(&env, cases).await;
    eprintln!("bad paths and targets: {rejected}/{n} rejected");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_with_loopback_authority_is_served() {
    // RFC 9112 §3.2.2: the target's authority replaces Host; a loopback one is fine.
    let env = Setup::new("absolute_form_with_loopback_authority_is_served")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let r = exchange(
        env.addr(),
        post(&format!("http://{h}/hub/mcp"), &h).as_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 200, "{}", message(&r));
    assert_eq!(env.hub.last_request().unwrap().path, "/hub/mcp");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_and_origin_variants_rejected() {
    let env = Setup::new("hostile_host_and_origin_variants_rejected")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let port = env.addr().port();
    let mis = Want::Status(421, "misdirected");
    let forbid = Want::Status(403, "Origin is not allowed");
    let host = |v: String| post("/hub/mcp", &v);
    let origin = |o: &str| {
        with_headers(
            &h,
            &format!(
                "Origin: {o}\r\nContent-Length: {}\r\nConnection: close\r\n",
                BODY.len()
            ),
            BODY,
        )
    };
    let cases = vec![
        case("empty Host", host(String::new()), mis),
        case(
            "Host with userinfo",
            host(format!("user@127.0.0.1:{port}")),
            mis,
        ),
        case("Host with path", host(format!("127.0.0.1:{port}/x")), mis),
        case(
            "Host double port",
            host(format!("127.0.0.1:{port}:{port}")),
            mis,
        ),
        case("Host decimal IP", host(format!("2130706433:{port}")), mis),
        case("Host hex IP", host(format!("0x7f.0.0.1:{port}")), mis),
        case("Host short IP", host(format!("127.1:{port}")), mis),
        case(
            "Host v4-mapped v6",
            host(format!("[::ffff:127.0.0.1]:{port}")),
            mis,
        ),
        case("Host unspecified", host(format!("0.0.0.0:{port}")), mis),
        case(
            "Host localhost suffix",
            host(format!("localhost.evil.example:{port}")),
            mis,
        ),
        case(
            "Host trailing space",
            host(format!("evil.example:{port} ")),
            mis,
        ),
        case(
            "two Host headers, loopback first",
            with_headers(
                &h,
                &format!(
                    "Host: evil.example\r\nContent-Length: {}\r\nConnection: close\r\n",
                    BODY.len()
                ),
                BODY,
            ),
            Want::Status(400, "more than one Host header"),
        ),
        case(
            "HTTP/1.1 without Host",
            format!(
                "POST /hub/mcp HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                BODY.len()
            ),
            Want::Status(400, "missing Host header"),
        ),
        case("Origin foreign", origin("http://evil.example"), forbid),
        case(
            "Origin userinfo trick",
            origin("http://127.0.0.1@evil.example"),
            forbid,
        ),
        case(
            "Origin fragment trick",
            origin("http://evil.example#@127.0.0.1"),
            forbid,
        ),
        case(
            "Origin list",
            origin("http://localhost:3000, http://evil.example"),
            forbid,
        ),
        case(
            "Origin with path",
            origin("http://localhost:3000/x"),
            forbid,
        ),
        case("Origin file", origin("file://"), forbid),
        case("Origin null", origin("null"), forbid),
        case(
            "Origin non-UTF-8",
            origin("http://\u{00ff}vil.example"),
            forbid,
        ),
        case(
            "two Origin headers, loopback first",
            with_headers(
                &h,
                &format!(
                    "Origin: http://localhost:1\r\nOrigin: http://evil.example\r\nContent-Length: {}\r\nConnection: close\r\n",
                    BODY.len()
                ),
                BODY,
            ),
            forbid,
        ),
    ];
    let n = cases.len();
    let rejected = run_cases(&env, cases).await;
    eprintln!("hostile Host/Origin: {rejected}/{n} rejected");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_framing_shapes_rejected() {
    let env = Setup::new("smuggling_and_framing_shapes_rejected")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let h = h.as_str();
    let bad = Want::Status(400, "");
    let te = |v: &str| {
        with_headers(
            h,
            &format!("Transfer-Encoding: {v}\r\nConnection: close\r\n"),
            &format!("{:x}\r\n{BODY}\r\n0\r\n\r\n", BODY.len()),
        )
    };
    let cases = vec![
        case(
            "duplicate CL, different",
            with_headers(
                h,
                &format!("Content-Length: {}\r\nContent-Length: 0\r\n", BODY.len()),
                BODY,
            ),
            bad,
        ),
        case(
            "CL list, different",
            with_headers(h, &format!("Content-Length: {}, 0\r\n", BODY.len()), BODY),
            bad,
        ),
        case(
            "CL plus sign",
            with_headers(h, "Content-Length: +5\r\n", "hello"),
            bad,
        ),
        case(
            "CL negative",
            with_headers(h, "Content-Length: -1\r\n", ""),
            bad,
        ),
        case(
            "CL hex",
            with_headers(h, "Content-Length: 0x5\r\n", "hello"),
            bad,
        ),
        case(
            "CL overflow",
            with_headers(h, "Content-Length: 99999999999999999999999\r\n", ""),
            bad,
        ),
        case("TE xchunked", te("xchunked"), bad),
        case("TE chunked, identity", te("chunked, identity"), bad),
        case("TE identity", te("identity"), bad),
        case("TE gzip only", te("gzip"), bad),
        case("TE quoted", te("\"chunked\""), bad),
        case(
            "TE space before colon",
            with_headers(
                h,
                "Transfer-Encoding : chunked\r\nConnection: close\r\n",
                &format!("{:x}\r\n{BODY}\r\n0\r\n\r\n", BODY.len()),
            ),
            bad,
        ),
        case(
            "TE obs-fold",
            with_headers(
                h,
                "Transfer-Encoding:\r\n chunked\r\nConnection: close\r\n",
                &format!("{:x}\r\n{BODY}\r\n0\r\n\r\n", BODY.len()),
            ),
            bad,
        ),
        case(
            "TE on HTTP/1.0",
            format!(
                "POST /hub/mcp HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{BODY}\r\n0\r\n\r\n",
                BODY.len()
            ),
            bad,
        ),
        case(
            "chunk size overflow",
            with_headers(
                h,
                "Transfer-Encoding: chunked\r\nConnection: close\r\n",
                "fffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
            ),
            Want::Status(400, "could not read the request body"),
        ),
        case(
            "chunk size negative",
            with_headers(
                h,
                "Transfer-Encoding: chunked\r\nConnection: close\r\n",
                "-1\r\nx\r\n0\r\n\r\n",
            ),
            Want::Status(400, "could not read the request body"),
        ),
        case(
            "chunk size 0x prefix",
            with_headers(
                h,
                "Transfer-Encoding: chunked\r\nConnection: close\r\n",
                "0x5\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Status(400, "could not read the request body"),
        ),
        case(
            "chunk data longer than its size",
            with_headers(
                h,
                "Transfer-Encoding: chunked\r\nConnection: close\r\n",
                &format!("2\r\n{BODY}\r\n0\r\n\r\n"),
            ),
            Want::Status(400, "could not read the request body"),
        ),
        case(
            "bare CR in a header value",
            with_headers(
                h,
                &format!("X-A: a\rb\r\nContent-Length: {}\r\n", BODY.len()),
                BODY,
            ),
            bad,
        ),
        case(
            "NUL in a header value",
            with_headers(
                h,
                &format!("X-A: a\0b\r\nContent-Length: {}\r\n", BODY.len()),
                BODY,
            ),
            bad,
        ),
        case(
            "obs-fold in a header",
            with_headers(
                h,
                &format!("X-A: a\r\n b\r\nContent-Length: {}\r\n", BODY.len()),
                BODY,
            ),
            bad,
        ),
        case(
            "space in a header name",
            with_headers(
                h,
                &format!("X A: b\r\nContent-Length: {}\r\n", BODY.len()),
                BODY,
            ),
            bad,
        ),
        case(
            "HTTP/2 preface on the HTTP/1 port",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            Want::Closed,
        ),
        case(
            "unknown HTTP version",
            format!("POST /hub/mcp HTTP/3.7\r\nHost: {h}\r\nContent-Length: 0\r\n\r\n"),
            bad,
        ),
        case(
            "request line with extra token",
            format!("POST /hub/mcp HTTP/1.1 x\r\nHost: {h}\r\nContent-Length: 0\r\n\r\n"),
            bad,
        ),
    ];
    let n = cases.len();
    let rejected = run_cases(&env, cases).await;
    eprintln!("smuggling and framing: {rejected}/{n} rejected");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_rejected() {
    let env = Setup::new("oversized_heads_and_bodies_rejected")
        .env(civic_sidecar::contract::ENV_MAX_BODY_BYTES, "65536")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let h = h.as_str();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(1024 * 1024));
    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = vec![
        case(
            "1 MiB header",
            with_headers(h, &format!("{big_header}Content-Length: 0\r\n"), ""),
            Want::Status(431, ""),
        ),
        case(
            "500 headers",
            with_headers(h, &format!("{many_headers}Content-Length: 0\r\n"), ""),
            Want::Status(431, ""),
        ),
        case(
            "1 MiB target",
            post(&format!("/hub/mcp?q={}", "a".repeat(1024 * 1024)), h),
            Want::Status(431, ""),
        ),
        case(
            "declared body over the limit",
            with_headers(h, "Content-Length: 65537\r\n", ""),
            Want::Status(413, "larger than 65536 bytes"),
        ),
        case(
            "declared body over the limit with Expect: 100-continue",
            with_headers(
                h,
                "Expect: 100-continue\r\nContent-Length: 1000000000\r\n",
                "",
            ),
            Want::Status(413, "larger than 65536 bytes"),
        ),
    ];
    let n = cases.len();
    let rejected = run_cases(&env, cases).await;

    // Chunked body that keeps going past the limit: 413, and the hub sees nothing.
    let before = env.hub.request_count();
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(
        format!("POST /hub/mcp HTTP/1.1\r\nHost: {h}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "z".repeat(16 * 1024));
    let mut sent = 0;
    // Write until the sidecar stops reading (it answered and closed) or 1 MiB went out.
    while sent < 1024 * 1024 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 16 * 1024;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    let reached = env.hub.request_count() - before;
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "endless chunked body: {}",
        head.lines().next().unwrap_or("(no answer)")
    );
    assert_eq!(reached, 0, "nothing reached the hub");
    eprintln!(
        "oversized: {}/{} rejected, plus an endless chunked body",
        rejected, n
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_requests_are_not_upgraded() {
    // h2c / WebSocket upgrades through a proxy can tunnel past it; the sidecar forwards the
    // request as a plain one without the hop-by-hop Upgrade and never answers 101.
    let env = Setup::new("upgrade_requests_are_not_upgraded")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    for (name, extra) in [
        (
            "h2c",
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        (
            "websocket",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
    ] {
        let req = format!(
            "GET /hub/mcp HTTP/1.1\r\nHost: {h}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        );
        let r = exchange(env.addr(), req.as_bytes())
            .await
            .expect("an answer");
        assert_ne!(r.status, 101, "{name}: never switched protocols");
        assert_eq!(r.status, 405, "{name}: the hub's answer to a plain GET");
        let seen = env.hub.last_request().unwrap();
        assert!(!seen.has_header("upgrade"), "{name}: Upgrade not forwarded");
        assert!(
            !seen.has_header("http2-settings"),
            "{name}: named hop-by-hop header dropped"
        );
    }
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_framing_is_parsed_once_and_still_checked() {
    // What the HTTP parser tolerates (RFC 9112 allows a bare LF as line end; a fragment is
    // dropped from the target; repeated equal Content-Length values are one value) is parsed
    // into one request, re-framed by the sidecar, and goes through the same checks. Nothing of
    // the workload's framing reaches the hub: it sees a request the sidecar serialized.
    let env = Setup::new("lenient_framing_is_parsed_once_and_still_checked")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let len = BODY.len();
    let bare_lf = format!(
        "POST /hub/mcp HTTP/1.1\nHost: {h}\nContent-Type: application/json\nContent-Length: {len}\nConnection: close\n\n{BODY}"
    );
    let r = exchange(env.addr(), bare_lf.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "bare LF: {}", message(&r));
    assert_eq!(env.hub.last_request().unwrap().body, BODY.as_bytes());

    let evil_lf = bare_lf.replace(&format!("Host: {h}"), "Host: evil.example");
    let n = env.hub.request_count();
    let r = exchange(env.addr(), evil_lf.as_bytes()).await.unwrap();
    assert_eq!(r.status, 421, "bare LF does not bypass the Host check");
    assert_eq!(env.hub.request_count(), n);

    let r = exchange(env.addr(), post("/hub/mcp?x=1#frag", &h).as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = env.hub.last_request().unwrap();
    assert_eq!(seen.uri, "/hub/mcp?x=1", "fragment dropped, query kept");

    let twice = with_headers(
        &h,
        &format!("Content-Length: {len}\r\nContent-Length: {len}\r\nConnection: close\r\n"),
        BODY,
    );
    let n = env.hub.request_count();
    let r = exchange(env.addr(), twice.as_bytes()).await.unwrap();
    assert_eq!(
        r.status,
        200,
        "equal Content-Length values: {}",
        message(&r)
    );
    assert_eq!(env.hub.request_count(), n + 1, "one request, not two");
    let seen = env.hub.last_request().unwrap();
    assert_eq!(
        seen.header_values("content-length"),
        vec![len.to_string()],
        "the hub gets one Content-Length"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_default_limit_413_hub_never_gets_it_whole() {
    // Bodies over the replay buffer (64 KiB) stream to the hub while they are counted; one that
    // passes the 4 MiB limit is cut: the workload gets 413 and the hub an aborted request, never
    // a complete one.
    let env = Setup::new("chunked_body_over_default_limit_413_hub_never_gets_it_whole")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(
        format!("POST /hub/mcp HTTP/1.1\r\nHost: {h}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let piece = 64 * 1024;
    let chunk = format!("{piece:x}\r\n{}\r\n", "z".repeat(piece));
    let total = 5 * 1024 * 1024;
    let mut sent = 0;
    while sent < total {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += piece;
    }
    if sent >= total {
        let _ = s.write_all(b"0\r\n\r\n").await;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "5 MiB chunked body: {}",
        head.lines().next().unwrap_or("(no answer)")
    );
    // The fake hub records a request whose body failed as an empty body.
    for r in env.hub.requests() {
        assert!(
            r.body.len() <= 4 * 1024 * 1024,
            "the hub never got more than the limit ({} bytes)",
            r.body.len()
        );
    }
    eprintln!(
        "5 MiB chunked: 413 after {sent} bytes sent; hub recorded {} request(s), bodies {:?}",
        env.hub.request_count(),
        env.hub
            .requests()
            .iter()
            .map(|r| r.body.len())
            .collect::<Vec<_>>()
    );
    assert_eq!(env.call(2).await.unwrap().status, 200, "still serving");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_plus_te_resolved_as_chunked_and_the_smuggled_request_is_checked() {
    // hyper resolves Content-Length + Transfer-Encoding as RFC 9112 §6.3 says (chunked wins,
    // Content-Length is dropped before the proxy sees the request), so the sidecar never
    // forwards both. What a front end reading Content-Length would take for body is, for the
    // sidecar, the next request on the connection: it is parsed and checked like any other.
    let env = Setup::new("cl_plus_te_resolved_as_chunked_and_the_smuggled_request_is_checked")
        .start()
        .await
        .unwrap();
    let h = env.addr().to_string();
    let smuggled = format!(
        "POST /hub/mcp HTTP/1.1\r\nHost: evil.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let chunked = format!("{:x}\r\n{BODY}\r\n0\r\n\r\n", BODY.len());
    for (name, framing) in [
        (
            "CL then TE",
            format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                chunked.len() + smuggled.len()
            ),
        ),
        (
            "TE then CL",
            format!(
                "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                chunked.len()
            ),
        ),
    ] {
        let before = env.hub.request_count();
        let mut s = TcpStream::connect(env.addr()).await.unwrap();
        s.write_all(with_headers(&h, &framing, &format!("{chunked}{smuggled}")).as_bytes())
            .await
            .unwrap();
        let first = civic_testkit::client::read_raw_response(&mut s)
            .await
            .unwrap();
        assert_eq!(first.status, 200, "{name}: the chunked request is served");
        let seen = env.hub.last_request().unwrap();
        assert_eq!(
            seen.body,
            BODY.as_bytes(),
            "{name}: the chunked body, nothing more"
        );
        assert!(
            !seen.has_header("transfer-encoding")
                || seen.header_values("content-length").is_empty(),
            "{name}: never both framings towards the hub"
        );
        assert!(
            seen.header_values("content-length")
                .iter()
                .all(|v| *v == BODY.len().to_string()),
            "{name}: a Content-Length the hub sees matches the body"
        );
        // The bytes after the chunked body: a request of their own, refused by the Host check,
        // or dropped with the connection. Either way they never reach the hub.
        match tokio::time::timeout(
            Duration::from_secs(5),
            civic_testkit::client::read_raw_response(&mut s),
        )
        .await
        {
            Ok(Ok(second)) => assert_eq!(second.status, 421, "{name}: smuggled request checked"),
            Ok(Err(_)) => {} // connection closed after the first response
            Err(_) => panic!("{name}: neither an answer nor a close for the trailing bytes"),
        }
        assert_eq!(
            env.hub.request_count(),
            before + 1,
            "{name}: one request reached the hub"
        );
    }
    env.finish();
}

/// A non-loopback address of this host, if it has one (found with a connected UDP socket,
/// which sends nothing).
fn non_loopback_local_ip() -> Option<std::net::IpAddr> {
    ["192.0.2.255:9", "10.255.255.255:9", "8.8.8.8:53"]
        .iter()
        .find_map(|dst| {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            s.connect(dst).ok()?;
            let ip = s.local_addr().ok()?.ip();
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_peer_on_the_loopback_listener_is_refused() {
    // Linux carries a connection from one of the host's own non-loopback addresses to 127.0.0.1
    // over `lo`: the sidecar sees a foreign peer on its loopback listener, as it would from a
    // neighbour when the node routes 127.0.0.0/8 from outside (route_localnet=1,
    // CVE-2020-8558; tests/isolation/run.sh checks that shape across network namespaces).
    let Some(ip) = non_loopback_local_ip() else {
        eprintln!("no non-loopback address on this host; tests/isolation/run.sh covers the check");
        return;
    };
    let env = Setup::new("non_loopback_peer_refused")
        .start()
        .await
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    let mut s = socket.connect(env.addr()).await.unwrap();
    let _ = s
        .write_all(post("/hub/mcp", &env.addr().to_string()).as_bytes())
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection is closed, not left open");
    assert!(
        buf.is_empty(),
        "no HTTP answer to a non-loopback peer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(env.hub.request_count(), 0, "nothing reached the hub");
    assert!(
        env.sidecar
            .wait_for_line("non-loopback peer", Duration::from_secs(2))
            .await
            .is_some(),
        "the refusal is logged"
    );
    // Loopback peers are still served.
    assert_eq!(env.call(1).await.unwrap().status, 200);
    env.finish();
}

/// Found on a real pod: a client that sends its request and then shuts down its write side (as
/// busybox `nc` and some HTTP/1.0 clients do) got no answer at all. It must get the hub's answer,
/// on HTTP/1.1 and HTTP/1.0, with and without a body, and the sidecar counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_requests_are_answered() {
    let env = Setup::new("half_closed_requests_are_answered")
        .start()
        .await
        .unwrap();
    let host = env.addr().to_string();
    // The fake hub answers a GET (standalone SSE stream) with 405: relayed as it is.
    let requests = [
        ("HTTP/1.1 POST", post("/hub/mcp", &host), 200),
        (
            "HTTP/1.0 POST",
            post("/hub/mcp", &host).replace("HTTP/1.1", "HTTP/1.0"),
            200,
        ),
        (
            "HTTP/1.1 keep-alive POST",
            post("/hub/mcp", &host).replace("Connection: close\r\n", ""),
            200,
        ),
        (
            "HTTP/1.0 GET",
            format!("GET /hub/mcp HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"),
            405,
        ),
    ];
    for (what, request, status) in &requests {
        let before = env.hub.request_count();
        let mut s = TcpStream::connect(env.addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer and no close in 10 s"))
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        let status_line = text.lines().next().unwrap_or_default();
        assert!(
            status_line.starts_with("HTTP/1.") && status_line[9..].starts_with(&status.to_string()),
            "{what}: the half-closed request got {text:?}"
        );
        assert_eq!(
            env.hub.request_count(),
            before + 1,
            "{what}: reached the hub once"
        );
    }
    // A truncated body then end of input is a broken request, not a half-close: the
    // connection ends at once (never waits for bytes that cannot come) and nothing reaches
    // the hub.
    let before = env.hub.request_count();
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    let truncated = post("/hub/mcp", &host);
    s.write_all(&truncated.as_bytes()[..truncated.len() - 10])
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("a truncated request must not hold the connection open")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "truncated: {text:?}"
    );
    assert_eq!(
        env.hub.request_count(),
        before,
        "a truncated request reached the hub"
    );
    // The same for a body large enough to stream on to the hub: its upload fails, nothing hangs.
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    let head = format!(
        "POST /hub/mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b' '; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("a truncated streaming body must not hold the connection open")
        .unwrap();
    let metrics = env.sidecar.metrics().await.unwrap();
    for (code, n) in [(200, 3), (405, 1)] {
        assert!(
            metrics.contains(&format!(
                "civic_sidecar_requests_total{{code=\"{code}\",profile=\"default\"}} {n}"
            )),
            "{metrics}"
        );
    }
    env.finish();
}

/// A workload that goes away (connection reset) while its request waits for the hub leaves a
/// trace: counted in `civic_sidecar_requests_abandoned_total` and logged, never silently lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_are_counted_and_logged() {
    let env = Setup::new("abandoned_requests_are_counted_and_logged")
        .start()
        .await
        .unwrap();
    env.hub.push(
        civic_testkit::hub::HubReply::json(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
        )
        .delay(Duration::from_secs(2)),
    );
    let mut s = TcpStream::connect(env.addr()).await.unwrap();
    s.write_all(post("/hub/mcp", &env.addr().to_string()).as_bytes())
        .await
        .unwrap();
    assert!(
        env.hub.wait_requests(1, Duration::from_secs(5)).await,
        "the request reached the hub"
    );
    // Linger 0: the close is a reset, as when the workload's process dies.
    s.set_zero_linger().unwrap();
    drop(s);
    let mut counted = false;
    for _ in 0..50 {
        let metrics = env.sidecar.metrics().await.unwrap();
        if metrics.contains("civic_sidecar_requests_abandoned_total 1") {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "the abandoned request was not counted");
    assert!(
        env.sidecar
            .wait_for_line(
                "workload went away before its answer was ready",
                Duration::from_secs(5)
            )
            .await
            .is_some(),
        "not logged"
    );
    env.finish();
}
