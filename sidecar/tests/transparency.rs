// docs/protocol.md statements 21-23, 28 and 29 (fake-hub half): MCP headers byte for byte,
// statuses and bodies unchanged, hop-by-hop headers dropped both ways, body limit, gzip.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use civic_sidecar::contract as c;
use civic_testkit::client::{self, gunzip_prefix, raw_request};
use civic_testkit::hub::{HubReply, SseStep, sse_message};
use common::Setup;
use http::{HeaderValue, Method, header};
use http_body_util::Full;
use serde_json::json;

fn body(id: u64) -> Full<Bytes> {
    Full::new(Bytes::from(client::jsonrpc(id, "tools/call").to_string()))
}

const MCP_REQUEST_HEADERS: &[(&str, &[u8])] = &[
    ("mcp-session-id", b"0a1B-2c3D_4e5F.6g7H~!$*+"),
    ("mcp-protocol-version", b"2025-11-25"),
    ("last-event-id", b"stream-7:42"),
    ("mcp-method", b"tools/call"),
    ("mcp-name", b"=?base64?ZWNobyB0b29s?="),
    ("mcp-param-city", b"Z\xc3\xbcrich"),
    ("mcp-param-x-nested-key", b"a, b,  c"),
    (
        "traceparent",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    ("tracestate", b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    (
        "baggage",
        b"userId=alice,serverNode=DF%2028,isProduction=false",
    ),
    ("x-unknown-end-to-end", b"keep  me\texactly; q=\"1\""),
    ("x-obs-text", b"caf\xe9"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_request_headers_reach_upstream_byte_for_byte() {
    let env = Setup::new("s21_request_headers_reach_upstream_byte_for_byte")
        .start()
        .await
        .unwrap();
    let mut req = env
        .request(Method::POST)
        .header(header::USER_AGENT, "agent-under-test/3.1")
        .header("x-dup", "first")
        .header("x-dup", "second")
        .body(body(1))
        .unwrap();
    req.headers_mut().insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    for (k, v) in MCP_REQUEST_HEADERS {
        req.headers_mut()
            .insert(*k, HeaderValue::from_bytes(v).unwrap());
    }
    assert_eq!(env.send(req).await.unwrap().status, 200);
    let seen = env.hub.last_request().unwrap();
    for (k, v) in MCP_REQUEST_HEADERS {
        assert_eq!(seen.header_bytes(k), vec![v.to_vec()], "{k} byte for byte");
    }
    assert_eq!(
        seen.header_values("accept"),
        vec!["application/json, text/event-stream"]
    );
    assert_eq!(
        seen.header_values("content-type"),
        vec!["application/json; charset=utf-8"]
    );
    assert_eq!(
        seen.header_values("x-dup"),
        vec!["first", "second"],
        "repeated headers kept in order"
    );
    let ua = seen.header("user-agent").unwrap_or_default();
    assert!(
        ua.starts_with("agent-under-test/3.1"),
        "the workload's User-Agent is kept: {ua:?}"
    );
    assert_eq!(
        seen.json().unwrap(),
        client::jsonrpc(1, "tools/call"),
        "body unchanged"
    );

    // Never adds MCP-Protocol-Version.
    assert_eq!(env.call(2).await.unwrap().status, 200);
    assert!(
        !env.hub
            .last_request()
            .unwrap()
            .has_header("mcp-protocol-version")
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_response_headers_and_statuses_unchanged() {
    let env = Setup::new("s22_response_headers_and_statuses_unchanged")
        .start()
        .await
        .unwrap();
    let modern_err = json!({"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2025-11-25"]}}});
    let cases: Vec<(u16, HubReply, &str)> = vec![
        (202, HubReply::accepted(), ""),
        (
            200,
            HubReply::body(
                200,
                "application/json",
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
            ),
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
        ),
        (
            400,
            HubReply::body(400, "application/json", modern_err.to_string()),
            "",
        ),
        (
            404,
            HubReply::body(
                404,
                "application/json",
                "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32001,\"message\":\"Session not found\"}}",
            ),
            "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32001,\"message\":\"Session not found\"}}",
        ),
        (
            405,
            HubReply::body(405, "text/plain", "Method Not Allowed"),
            "Method Not Allowed",
        ),
        (
            406,
            HubReply::body(
                406,
                "application/json",
                "{\"jsonrpc\":\"2.0\",\"id\":\"server-error\",\"error\":{\"code\":-32600,\"message\":\"Not Acceptable\"}}",
            ),
            "{\"jsonrpc\":\"2.0\",\"id\":\"server-error\",\"error\":{\"code\":-32600,\"message\":\"Not Acceptable\"}}",
        ),
    ];
    for (i, (status, reply, want)) in cases.into_iter().enumerate() {
        env.hub.push(
            reply
                .header("mcp-session-id", "sess-0123456789abcdef")
                .header("cache-control", "no-cache, no-transform")
                .header("x-accel-buffering", "no")
                .header("retry-after", "5")
                .header("x-hub-unknown", "v1; p=\"q\""),
        );
        let r = env.call(i as u64).await.unwrap();
        assert_eq!(r.status, status, "status unchanged");
        let want = if status == 400 {
            modern_err.to_string()
        } else {
            want.to_string()
        };
        assert_eq!(r.text(), want, "{status}: body unchanged");
        if status == 202 {
            assert!(r.body.is_empty(), "202 with an empty body");
        }
        assert_eq!(
            r.header_values("mcp-session-id"),
            vec!["sess-0123456789abcdef"]
        );
        assert_eq!(
            r.header_values("cache-control"),
            vec!["no-cache, no-transform"]
        );
        assert_eq!(r.header_values("x-accel-buffering"), vec!["no"]);
        assert_eq!(r.header_values("retry-after"), vec!["5"]);
        assert_eq!(r.header_values("x-hub-unknown"), vec!["v1; p=\"q\""]);
        if status != 202 {
            assert!(
                r.header("content-type").is_some(),
                "{status}: Content-Type kept"
            );
        }
    }
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_hop_by_hop_request_headers_dropped() {
    let env = Setup::new("s23_hop_by_hop_request_headers_dropped")
        .start()
        .await
        .unwrap();
    let addr = env.addr();
    let payload = client::jsonrpc(1, "tools/list").to_string();
    let raw = format!(
        "POST /hub/mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nConnection: keep-alive, x-hop-one, X-Hop-Two\r\n\
         x-hop-one: gone\r\nX-Hop-Two: gone too\r\nKeep-Alive: timeout=5, max=100\r\n\
         Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: x-checksum\r\nUpgrade: websocket\r\n\
         Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\nx-end-to-end: stays\r\n\
         Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let r = raw_request(addr, raw.as_bytes(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = env.hub.last_request().unwrap();
    for h in [
        "x-hop-one",
        "x-hop-two",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!seen.has_header(h), "{h} must not be forwarded");
    }
    for v in seen.header_values("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-hop") && !v.contains("upgrade"),
            "the workload's Connection is not forwarded: {v}"
        );
    }
    assert_eq!(seen.header_values("x-end-to-end"), vec!["stays"]);
    assert_eq!(
        seen.header_values("host"),
        vec![env.hub.addr().to_string()],
        "Host is the upstream authority"
    );
    assert_eq!(seen.json().unwrap(), client::jsonrpc(1, "tools/list"));

    // A chunked request body arrives intact; the only Transfer-Encoding upstream is the hop's own.
    let chunk = client::jsonrpc(2, "tools/list").to_string();
    let (a, b) = chunk.split_at(10);
    let raw = format!(
        "POST /hub/mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let r = raw_request(addr, raw.as_bytes(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen = env.hub.last_request().unwrap();
    assert_eq!(seen.json().unwrap(), client::jsonrpc(2, "tools/list"));
    let te = seen.header_values("transfer-encoding");
    assert!(
        te.is_empty() || te == vec!["chunked"],
        "no forwarded Transfer-Encoding: {te:?}"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_hop_by_hop_response_headers_dropped() {
    let env = Setup::new("s23_hop_by_hop_response_headers_dropped")
        .start()
        .await
        .unwrap();
    env.hub.push(
        HubReply::json(&json!({"jsonrpc":"2.0","id":1,"result":{}}))
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "gone")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authenticate", "Basic realm=\"hub\"")
            .header("trailer", "x-checksum")
            .header("upgrade", "h2c")
            .header("x-end-to-end", "stays"),
    );
    let addr = env.addr();
    let payload = client::jsonrpc(1, "tools/list").to_string();
    let raw = format!(
        "POST /hub/mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    let r = raw_request(addr, raw.as_bytes(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    for h in [
        "x-resp-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert!(
            r.header(h).is_none(),
            "{h} must not reach the workload: {:?}",
            r.headers
        );
    }
    for v in r.header_values("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-resp-hop"),
            "hub's Connection not forwarded: {v}"
        );
    }
    assert_eq!(r.header_values("x-end-to-end"), vec!["stays"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"],
        1
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_body_over_limit_is_413() {
    let env = Setup::new("s28_body_over_limit_is_413")
        .env(c::ENV_MAX_BODY_BYTES, "2048")
        .start()
        .await
        .unwrap();
    let addr = env.addr();
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{{\"pad\":\"{}\"}}}}",
        "a".repeat(3000)
    );
    let r = client::send(
        addr,
        env.request(Method::POST)
            .body(Full::new(Bytes::from(big.clone())))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "Content-Length over the limit");
    // Chunked, no Content-Length: the limit still applies.
    let mut raw = format!(
        "POST /hub/mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for part in big.as_bytes().chunks(500) {
        raw.push_str(&format!(
            "{:x}\r\n{}\r\n",
            part.len(),
            std::str::from_utf8(part).unwrap()
        ));
    }
    raw.push_str("0\r\n\r\n");
    let r = raw_request(addr, raw.as_bytes(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "chunked body over the limit");
    assert_eq!(
        env.hub.request_count(),
        0,
        "oversized bodies never reach the upstream"
    );
    let small = client::jsonrpc(2, "tools/list");
    assert_eq!(
        env.post(&small).await.unwrap().status,
        200,
        "bodies under the limit pass"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_default_limit_is_4_mib() {
    let env = Setup::new("s28_default_limit_is_4_mib")
        .start()
        .await
        .unwrap();
    let make = |n: usize| {
        let head = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{\"pad\":\"";
        let tail = "\"}}";
        format!("{head}{}{tail}", "b".repeat(n - head.len() - tail.len()))
    };
    let over = make(4 * 1024 * 1024 + 1);
    let r = env
        .send(
            env.request(Method::POST)
                .body(Full::new(Bytes::from(over)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(env.hub.request_count(), 0);
    let under = make(1024 * 1024);
    let r = env
        .send(
            env.request(Method::POST)
                .body(Full::new(Bytes::from(under.clone())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "1 MiB passes");
    assert_eq!(env.hub.last_request().unwrap().body.len(), under.len());
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_gzip_json_and_sse_not_stalled_or_corrupted() {
    let env = Setup::new("s29_gzip_json_and_sse_not_stalled_or_corrupted")
        .start()
        .await
        .unwrap();
    let result = json!({"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"x".repeat(4000)}]}});
    env.hub.push(HubReply::json(&result).gzip());
    let req = env
        .request(Method::POST)
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(body(1))
        .unwrap();
    let r = env.send(req).await.unwrap();
    assert_eq!(r.status, 200);
    let gz = r.header("content-encoding") == Some("gzip");
    let decoded = if gz {
        gunzip_prefix(&r.body)
    } else {
        r.body.to_vec()
    };
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&decoded).unwrap(),
        result,
        "JSON round-trips (gzip relayed: {gz})"
    );
    if !gz {
        assert!(
            r.header("content-encoding").is_none(),
            "no Content-Encoding on an identity body"
        );
    }

    // SSE with gzip: the first event must be readable long before the second is sent.
    let ev1 = sse_message(
        &json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}),
    );
    let ev2 = sse_message(&json!({"jsonrpc":"2.0","id":2,"result":{"done":true}}));
    env.hub.push(
        HubReply::sse(vec![
            SseStep::Event(ev1.clone()),
            SseStep::Wait(Duration::from_millis(1500)),
            SseStep::Event(ev2.clone()),
        ])
        .gzip(),
    );
    let req = env
        .request(Method::POST)
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(body(2))
        .unwrap();
    let t0 = Instant::now();
    let mut resp = client::open(env.addr(), req).await.unwrap();
    assert_eq!(resp.status, 200);
    let gz = resp.header("content-encoding") == Some("gzip");
    let mut raw = Vec::new();
    let first_at = loop {
        let chunk = resp
            .next_chunk(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("stream data");
        raw.extend_from_slice(&chunk);
        let text = if gz { gunzip_prefix(&raw) } else { raw.clone() };
        if String::from_utf8_lossy(&text).contains(ev1.trim_end()) {
            break t0.elapsed();
        }
    };
    assert!(
        first_at < Duration::from_millis(1000),
        "first event stalled for {first_at:?} (gzip relayed: {gz})"
    );
    let rest = resp.read_to_end(Duration::from_secs(5)).await.unwrap();
    raw.extend_from_slice(&rest);
    let text = if gz { gunzip_prefix(&raw) } else { raw };
    assert_eq!(
        String::from_utf8(text).unwrap(),
        format!("{ev1}{ev2}"),
        "SSE round-trips intact"
    );
    env.finish();
}
