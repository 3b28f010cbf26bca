//! The hub connection pool (docs/architecture.md §5, docs/protocol.md statements 26 and 32):
//! one HTTP/2 connection carries many workload connections' requests, HTTP/1.1 connections are
//! kept alive and reused, a slow SSE reader does not stall other streams, a hub that closes or
//! GOAWAYs its connections costs no request, and a workload that leaves resets only its stream.

mod common;

use std::time::{Duration, Instant};

use civic_testkit::DelayRelay;
use civic_testkit::client;
use civic_testkit::hub::{HubReply, SseStep, sse_message};
use common::{HubProtocol, Setup, eventually};
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn body(id: u64) -> http_body_util::Full<bytes::Bytes> {
    http_body_util::Full::new(bytes::Bytes::from(
        client::jsonrpc(id, "tools/call").to_string(),
    ))
}

/// The "314 connections for 314 requests" case: the official Python client opens a new
/// workload connection per request; the hub must still see one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_one_hub_connection_for_many_workload_connections() {
    for tls in [false, true] {
        let mut setup = Setup::new("h2_one_hub_connection_for_many_workload_connections")
            .hub_protocol(HubProtocol::H2);
        if tls {
            setup = setup.tls();
        }
        let env = setup.start().await.unwrap();
        const N: u64 = 60;
        for id in 0..N {
            let resp = env.call(id).await.unwrap();
            assert_eq!(resp.status, 200, "tls={tls} request {id}: {}", resp.text());
        }
        let requests = env.hub.requests();
        assert_eq!(requests.len(), N as usize);
        for r in &requests {
            assert_eq!(r.version, http::Version::HTTP_2, "tls={tls}");
            assert_eq!(
                r.connection, 1,
                "tls={tls}: request {} on another connection",
                r.index
            );
            assert!(!r.host_field, "HTTP/2 carries :authority, not Host");
            let authority = env.hub.base_url().split("://").nth(1).unwrap().to_string();
            assert_eq!(r.header_values("host"), vec![authority], ":authority");
        }
        assert_eq!(env.hub.connections(), 1, "tls={tls}: one hub connection");
        let metrics = client::get(env.sidecar.admin_addr(), "/metrics")
            .await
            .unwrap()
            .text();
        assert!(
            metrics.contains("civic_sidecar_hub_connections{protocol=\"h2\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("civic_sidecar_hub_requests_waiting 0"),
            "{metrics}"
        );
        env.finish();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_pool_reuses_keep_alive_connections() {
    for tls in [false, true] {
        let mut setup =
            Setup::new("http1_pool_reuses_keep_alive_connections").hub_protocol(HubProtocol::Http1);
        if tls {
            setup = setup.tls();
        }
        let env = setup.start().await.unwrap();
        const N: u64 = 40;
        for id in 0..N {
            let resp = env.call(id).await.unwrap();
            assert_eq!(resp.status, 200, "tls={tls} request {id}: {}", resp.text());
        }
        let requests = env.hub.requests();
        assert!(requests.iter().all(|r| r.version == http::Version::HTTP_11));
        // The warm connection plus at most one spare the maintainer opened meanwhile.
        assert!(
            env.hub.connections() <= 2,
            "tls={tls}: {} hub connections for {N} sequential requests",
            env.hub.connections()
        );
        // Concurrent requests need concurrent connections; they are reused afterwards.
        let calls = (0..8).map(|i| env.call(100 + i));
        for resp in futures_util::future::join_all(calls).await {
            assert_eq!(resp.unwrap().status, 200);
        }
        let after_burst = env.hub.connections();
        for id in 200..220 {
            assert_eq!(env.call(id).await.unwrap().status, 200);
        }
        assert_eq!(
            env.hub.connections(),
            after_burst,
            "tls={tls}: idle connections reused"
        );
        env.finish();
    }
}

/// Several workloads that stop reading big SSE streams must not stall another stream on the
/// same HTTP/2 connection (per-stream windows; the connection window holds them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_slow_sse_reader_does_not_stall_other_streams() {
    let env = Setup::new("h2_slow_sse_reader_does_not_stall_other_streams")
        .hub_protocol(HubProtocol::H2)
        .start()
        .await
        .unwrap();
    let chunk = format!("event: message\ndata: {}\n\n", "x".repeat(16 * 1024));
    let big = || HubReply::sse(vec![SseStep::Event(chunk.clone()); 256]); // 4 MiB
    let mut stalled = Vec::new();
    for id in 0..4 {
        env.hub.push(big());
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(env.addr()).await.unwrap();
        let body = client::jsonrpc(id, "tools/call").to_string();
        let head = format!(
            "POST /hub/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut first = [0u8; 64];
        let n = stream.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
        stalled.push(stream); // never read again
    }
    assert!(env.hub.wait_open_streams(4, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let events: Vec<SseStep> = (0..64)
        .map(|i| SseStep::Event(sse_message(&json!({"i": i, "pad": "y".repeat(16 * 1024)}))))
        .collect();
    env.hub.push(HubReply::sse(events));
    let t = Instant::now();
    let mut resp = client::open(env.addr(), env.request(Method::POST).body(body(9)).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let all = resp.read_to_end(Duration::from_secs(10)).await.unwrap();
    assert!(all.len() > 64 * 16 * 1024, "read {} bytes", all.len());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the free stream took {:?}",
        t.elapsed()
    );
    let requests = env.hub.requests();
    assert!(requests.iter().all(|r| r.connection == 1), "one connection");
    drop(stalled);
    env.finish();
}

/// A hub that closes its connections (GOAWAY on HTTP/2; on HTTP/1.1, idle ones at once and busy
/// ones after their response) costs no request: the pool reconnects, and a stream open on the
/// old connection runs to its end. HTTP/1.1 has no GOAWAY: a request written into an idle
/// connection the hub is closing at that moment fails (RFC 9112 §9.3.1: the sidecar cannot know
/// whether the hub acted on it, so it is not retried), so there the test lets the close arrive
/// first; HTTP/2 needs no such pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_closing_connections_fails_no_request() {
    for protocol in [HubProtocol::H2, HubProtocol::Http1] {
        let env = Setup::new("hub_closing_connections_fails_no_request")
            .hub_protocol(protocol)
            .start()
            .await
            .unwrap();
        assert_eq!(env.call(1).await.unwrap().status, 200);
        env.hub.push(HubReply::sse(vec![
            SseStep::Event(sse_message(&json!({"n": 1}))),
            SseStep::Wait(Duration::from_millis(500)),
            SseStep::Event(sse_message(&json!({"n": 2}))),
        ]));
        let mut stream = client::open(env.addr(), env.request(Method::POST).body(body(2)).unwrap())
            .await
            .unwrap();
        assert!(
            stream
                .next_chunk(Duration::from_secs(3))
                .await
                .unwrap()
                .is_some()
        );
        for round in 0..3u64 {
            let before = env.hub.connections();
            env.hub.close_connections();
            if protocol == HubProtocol::Http1 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for id in 0..10 {
                let resp = env.call(10 * round + id).await.unwrap();
                assert_eq!(
                    resp.status,
                    200,
                    "{protocol:?} round {round} request {id}: {}",
                    resp.text()
                );
            }
            assert!(env.hub.connections() > before, "{protocol:?}: reconnected");
        }
        let rest = stream.read_to_end(Duration::from_secs(5)).await.unwrap();
        assert!(
            String::from_utf8_lossy(&rest).contains("\"n\":2"),
            "{protocol:?}: the stream on the closed connection finished"
        );
        env.finish();
    }
}

/// Statement 26 on HTTP/2: the workload leaving resets its stream at once, and only its stream:
/// the hub connection stays open and carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_workload_disconnect_resets_only_its_stream() {
    let env = Setup::new("h2_workload_disconnect_resets_only_its_stream")
        .hub_protocol(HubProtocol::H2)
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    env.hub
        .push(HubReply::endless_sse(Duration::from_millis(100)));
    let mut resp = client::open(env.addr(), env.request(Method::POST).body(body(2)).unwrap())
        .await
        .unwrap();
    assert!(
        resp.next_chunk(Duration::from_secs(3))
            .await
            .unwrap()
            .is_some()
    );
    assert!(env.hub.wait_open_streams(1, Duration::from_secs(2)).await);
    let t = Instant::now();
    drop(resp);
    assert!(
        eventually(Duration::from_millis(1500), || env.hub.aborted_streams()
            == 1)
        .await,
        "the hub's stream was not cancelled"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "after {:?}",
        t.elapsed()
    );
    assert_eq!(env.hub.closed_connections(), 0, "only the stream was reset");
    assert_eq!(env.call(3).await.unwrap().status, 200);
    assert!(env.hub.requests().iter().all(|r| r.connection == 1));
    env.finish();
}

/// A reconnect resumes the TLS session (rustls' client session cache, shared through the one
/// client configuration) instead of a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_the_tls_session() {
    for protocol in [HubProtocol::H2, HubProtocol::Http1] {
        let env = Setup::new("reconnect_resumes_the_tls_session")
            .hub_protocol(protocol)
            .tls()
            .env("CIVIC_LOG", "info,civic_sidecar::upstream=debug")
            .start()
            .await
            .unwrap();
        assert_eq!(env.call(1).await.unwrap().status, 200);
        let before = env.hub.connections();
        env.hub.close_connections();
        assert!(
            eventually(Duration::from_secs(5), || env.hub.connections() > before).await,
            "{protocol:?}: the pool reconnected on its own"
        );
        assert_eq!(env.call(2).await.unwrap().status, 200);
        assert!(
            env.sidecar
                .wait_for_line("\"resumed\":true", Duration::from_secs(5))
                .await
                .is_some(),
            "{protocol:?}: no resumed handshake in\n{}",
            env.sidecar.output_text()
        );
        env.finish();
    }
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// A client calling the hub directly over TLS, as the workload would without the sidecar.
async fn direct_call(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    port: u16,
) {
    let req = http::Request::post(format!("https://localhost:{port}/hub/mcp"))
        .header("authorization", "Bearer direct")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body(1))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
}

async fn direct_h2(
    ca: &civic_testkit::TestCa,
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let mut config = (*ca.client_config().unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// Per-call latency against a hub 40 ms away (a userspace relay adds 20 ms each way): direct
/// over HTTP/2 (new connection per call, and one long-lived connection) against the sidecar
/// (new workload connection per call, as the official Python client does, and one kept-alive
/// workload connection). Prints the medians; run with `--ignored --nocapture`. Set
/// `CIVIC_SIDECAR_BIN` to compare another build, `CIVIC_TEST_HUB_DELAY_MS` for another one-way
/// delay (0: the relay's own cost only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: about 30 s"]
async fn latency_to_a_hub_40ms_away() {
    const N: usize = 25;
    let one_way = Duration::from_millis(
        std::env::var("CIVIC_TEST_HUB_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    for protocol in [HubProtocol::H2, HubProtocol::Http1] {
        let relay = DelayRelay::start(one_way).await.unwrap();
        let env = Setup::new("latency_to_a_hub_40ms_away")
            .hub_protocol(protocol)
            .tls()
            .hub_url(format!("https://localhost:{}/hub/mcp", relay.addr().port()))
            .start_with(|_, hub| {
                relay.set_target(hub.addr());
                hub.set_validator(|_| true);
            })
            .await
            .unwrap();
        let ca = env.ca.as_ref().unwrap();
        let port = relay.addr().port();
        let mut figures = Vec::new();
        // Connections the direct client opens (the fake hub counts them too).
        let direct = if protocol == HubProtocol::H2 {
            N + 1
        } else {
            0
        };
        if protocol == HubProtocol::H2 {
            let mut new_conn = Vec::new();
            for _ in 0..N {
                let t = Instant::now();
                let mut sender = direct_h2(ca, relay.addr()).await;
                direct_call(&mut sender, port).await;
                new_conn.push(t.elapsed());
            }
            figures.push(("direct h2, new connection per call", median_ms(new_conn)));
            let mut sender = direct_h2(ca, relay.addr()).await;
            let mut kept = Vec::new();
            for _ in 0..N {
                let t = Instant::now();
                direct_call(&mut sender, port).await;
                kept.push(t.elapsed());
            }
            figures.push(("direct h2, one long-lived connection", median_ms(kept)));
        }
        // Warm-up: the pool's first connection.
        assert_eq!(env.call(0).await.unwrap().status, 200);
        let mut per_call = Vec::new();
        for id in 0..N as u64 {
            let t = Instant::now();
            assert_eq!(env.call(id).await.unwrap().status, 200);
            per_call.push(t.elapsed());
        }
        figures.push((
            "sidecar, new workload connection per call",
            median_ms(per_call),
        ));
        let mut conn = client::KeepAlive::connect(env.addr()).await.unwrap();
        let mut kept = Vec::new();
        for id in 0..N as u64 {
            let t = Instant::now();
            assert_eq!(conn.call(id).await.unwrap().0, 200);
            kept.push(t.elapsed());
        }
        figures.push((
            "sidecar, one kept-alive workload connection",
            median_ms(kept),
        ));
        for (what, ms) in figures {
            eprintln!("LATENCY hub={protocol:?} {what}: median {ms:.1} ms");
        }
        eprintln!(
            "LATENCY hub={protocol:?} hub connections opened by the sidecar: {}",
            env.hub.connections() - direct
        );
        env.finish();
    }
}
