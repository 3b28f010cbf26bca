// Issue 7, sidecar faults: what the workload sees while Civic Auth, the hub or the files the
// sidecar reads misbehave, that every request still gets an answer, that exchange attempts stay
// bounded by the backoff, and that the sidecar serves again, without a restart, once the fault
// clears.
//
// Already proven elsewhere, not repeated here (see SECURITY.md's table):
// - 4xx from Civic Auth → 502, not cached: `credentials::s15_invalid_grant_is_502_and_not_cached`,
//   `credentials::s15_invalid_client_is_502`;
// - 429 / 500 / 502 → 503 with `Retry-After`: `credentials::s15_throttled_or_5xx_is_503_with_retry_after`;
// - `Retry-After` honoured, 5xx retried with backoff: `credentials::s16_retry_after_honoured_and_backoff`;
// - exchange timeout ≤ 15 s: `credentials::s16_exchange_timeout_at_most_15s`;
// - Civic Auth down with a cached token: `cache::cache_outage_serves_cached_token_until_expiry_then_503`;
// - one 401 from the hub → one re-exchange and replay: `credentials::s17_*`, `s18_*`;
// - subject and secret rotation at rest: `credentials::s13_*`, `cache::s13_*`,
//   `cache::cache_rotated_secret_file_picked_up`;
// - workload disconnect mid-stream: `streaming::s26_*`.
//
// Faults at the TCP level (refused, reset, black hole, cut mid-stream, idle close) come from
// [`Relay`], a small TCP relay placed in front of the fake Civic Auth or the fake hub.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use civic_sidecar::contract as c;
use civic_testkit::client::KeepAlive;
use civic_testkit::secrets::{CLIENT_SECRET, CLIENT_SECRET_ROTATED};
use civic_testkit::{AuthReply, HubReply, Readiness, SseStep, client, jwt};
use common::{Env, Setup, Subject, assert_sidecar_error};
use http::{Method, header};
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// A TCP relay with switchable faults.

/// What the relay does with the next connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Relay bytes both ways.
    None,
    /// Close the listening socket: connections are refused.
    Refuse,
    /// Accept, then reset (RST) at once.
    Reset,
    /// Accept and read, never answer.
    Blackhole,
    /// Relay, but reset the client side after this many response bytes.
    CutAfter(usize),
    /// Relay, but close both sides after this long without traffic (a hub's keep-alive timeout).
    IdleClose(Duration),
}

struct RelayState {
    target: Mutex<Option<SocketAddr>>,
    accepted: AtomicUsize,
    /// The generation of the last fault the accept loop has put in place.
    applied: watch::Sender<u64>,
}

/// A relay on 127.0.0.1; its faults apply to connections accepted after [`Relay::set`], and
/// setting one closes the connections open until then, as a hub outage or restart would (the
/// sidecar's pooled hub connections outlive workload connections, so they must see it too).
struct Relay {
    addr: SocketAddr,
    state: Arc<RelayState>,
    /// The fault, with a generation that [`Relay::set`] waits for the accept loop to apply.
    fault: watch::Sender<(u64, Fault)>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let state = Arc::new(RelayState {
            target: Mutex::new(None),
            accepted: AtomicUsize::new(0),
            applied: watch::Sender::new(0),
        });
        let (fault, rx) = watch::channel((0, Fault::None));
        let task = tokio::spawn(accept_loop(addr, listener, state.clone(), rx));
        Self {
            addr,
            state,
            fault,
            task,
        }
    }

    /// Where healthy connections go (known only once the fakes run).
    fn set_target(&self, target: SocketAddr) {
        *self.state.target.lock().unwrap() = Some(target);
    }

    /// Returns once the accept loop applies `fault`: a connection the sidecar opens after this
    /// returns sees it (without the wait, a connect racing the relay's own task could still be
    /// accepted by the old listener).
    async fn set(&self, fault: Fault) {
        let generation = self.fault.borrow().0 + 1;
        self.fault.send_replace((generation, fault));
        let mut applied = self.state.applied.subscribe();
        tokio::time::timeout(
            Duration::from_secs(5),
            applied.wait_for(|g| *g >= generation),
        )
        .await
        .unwrap_or_else(|_| panic!("relay did not apply {fault:?}"))
        .expect("the relay state outlives this call");
        // Lets the sidecar see the closed connections before the test's next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    addr: SocketAddr,
    first: TcpListener,
    state: Arc<RelayState>,
    mut rx: watch::Receiver<(u64, Fault)>,
) {
    let mut listener = Some(first);
    loop {
        let (generation, fault) = *rx.borrow_and_update();
        if fault == Fault::Refuse {
            listener = None;
            state.applied.send_replace(generation);
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        if listener.is_none() {
            // SO_REUSEADDR (tokio's default on Unix) lets the port be bound again at once.
            let mut tries = 0;
            listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break Some(l),
                    Err(e) if tries < 100 => {
                        tries += 1;
                        eprintln!("relay: rebinding {addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("relay cannot rebind {addr}: {e}"),
                }
            };
        }
        let l = listener.as_ref().expect("bound above");
        state.applied.send_replace(generation);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            accepted = l.accept() => if let Ok((stream, _)) = accepted {
                state.accepted.fetch_add(1, Ordering::SeqCst);
                let target = *state.target.lock().unwrap();
                let mut next = rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve(stream, target, fault) => {}
                        _ = next.changed() => {}
                    }
                });
            },
        }
    }
}

async fn serve(mut client: TcpStream, target: Option<SocketAddr>, fault: Fault) {
    match fault {
        Fault::Refuse => {}
        Fault::Reset => {
            let _ = client.set_zero_linger();
        }
        Fault::Blackhole => {
            let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
        }
        Fault::None | Fault::CutAfter(_) | Fault::IdleClose(_) => {
            let Some(target) = target else { return };
            let Ok(upstream) = TcpStream::connect(target).await else {
                let _ = client.set_zero_linger();
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            pipe(client, upstream, fault).await;
        }
    }
}

/// Copies both ways; applies `CutAfter` / `IdleClose`.
async fn pipe(client: TcpStream, upstream: TcpStream, fault: Fault) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let idle = match fault {
        Fault::IdleClose(d) => d,
        _ => Duration::from_secs(3600),
    };
    let limit = match fault {
        Fault::CutAfter(n) => n,
        _ => usize::MAX,
    };
    let mut sent = 0usize;
    let (mut a, mut b) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        tokio::select! {
            n = cr.read(&mut a) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if uw.write_all(&a[..n]).await.is_err() { break },
            },
            n = ur.read(&mut b) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let take = n.min(limit - sent);
                    if cw.write_all(&b[..take]).await.is_err() { break }
                    sent += take;
                    if sent >= limit {
                        // Reset the client side: the response is cut mid-body.
                        let client = cr.reunite(cw).expect("same stream");
                        let _ = client.set_zero_linger();
                        return;
                    }
                }
            },
            () = tokio::time::sleep(idle) => break,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Sum of `civic_sidecar_exchanges_total` over all results: exchange attempts made.
async fn exchange_attempts(env: &Env) -> u64 {
    metric_sum(
        &env.sidecar.metrics().await.unwrap(),
        "civic_sidecar_exchanges_total",
    )
}

fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One POST per `every` for `dur`; each answer's status, 0 for "no HTTP answer at all".
async fn drive(env: &Env, dur: Duration, every: Duration) -> Vec<u16> {
    let end = Instant::now() + dur;
    let mut statuses = Vec::new();
    let mut id = 1000;
    while Instant::now() < end {
        id += 1;
        statuses.push(env.call(id).await.map(|r| r.status).unwrap_or(0));
        tokio::time::sleep(every).await;
    }
    statuses
}

/// Polls with requests until one gets 200; how long that took.
async fn recovers(env: &Env, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut id = 5000;
    while t0.elapsed() < limit {
        id += 1;
        if env.call(id).await.map(|r| r.status).unwrap_or(0) == 200 {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The sidecar process is alive and `/livez` answers.
async fn assert_alive(env: &mut Env) {
    assert!(env.sidecar.is_running(), "the sidecar must stay up");
    let r = client::get(env.sidecar.admin_addr(), "/livez")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

async fn readyz(env: &Env) -> (u16, String) {
    let r = client::get(env.sidecar.admin_addr(), "/readyz")
        .await
        .unwrap();
    (r.status, r.text())
}

fn assert_retry_after(r: &client::HttpResponse, range: std::ops::RangeInclusive<u64>) {
    let v: u64 = r
        .header("retry-after")
        .expect("a 503 carries Retry-After")
        .trim()
        .parse()
        .expect("Retry-After in seconds");
    assert!(range.contains(&v), "Retry-After {v} not in {range:?}");
}

// ---------------------------------------------------------------------------------------------
// Civic Auth faults.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refused_503_bounded_attempts_then_recovers() {
    let relay = Relay::start().await;
    relay.set(Fault::Refuse).await;
    let mut env = Setup::new("auth_refused_503_bounded_attempts_then_recovers")
        .readiness(Readiness::Live)
        .env(c::ENV_TOKEN_URL, relay.url("/oauth/token"))
        .start_with(|auth, _| relay.set_target(auth.addr()))
        .await
        .unwrap();
    let t0 = Instant::now();
    let r = env.call(1).await.unwrap();
    assert_sidecar_error(&r, 503, &["cannot reach the token endpoint"]);
    assert_retry_after(&r, 1..=60);
    let statuses = drive(&env, Duration::from_secs(4), Duration::from_millis(50)).await;
    assert!(
        statuses.iter().all(|s| *s == 503),
        "every request answered 503 during the outage: {statuses:?}"
    );
    let attempts = exchange_attempts(&env).await;
    let window = t0.elapsed();
    // Backoff 1 s base, ×2, equal jitter: at most 0 + 0.5 + 1 + 2 (+ 4) s apart.
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} exchange attempts in {window:?} for {} requests",
        statuses.len() + 1
    );
    assert_eq!(env.auth.calls(), 0);
    let (code, text) = readyz(&env).await;
    assert_eq!(code, 503);
    assert!(text.contains("cannot reach the token endpoint"), "{text}");

    relay.set(Fault::None).await;
    let took = recovers(&env, Duration::from_secs(20)).await;
    eprintln!(
        "auth refused: {} requests answered 503, {attempts} attempts in {window:?}, recovered after {took:?}",
        statuses.len() + 1
    );
    assert!(took.is_some(), "serves again once Civic Auth is back");
    let mut ready = false;
    for _ in 0..50 {
        if readyz(&env).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again");
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_resets_connections_503_then_recovers() {
    let relay = Relay::start().await;
    relay.set(Fault::Reset).await;
    let mut env = Setup::new("auth_resets_connections_503_then_recovers")
        .readiness(Readiness::Live)
        .env(c::ENV_TOKEN_URL, relay.url("/oauth/token"))
        .start_with(|auth, _| relay.set_target(auth.addr()))
        .await
        .unwrap();
    let r = env.call(1).await.unwrap();
    assert_sidecar_error(&r, 503, &["cannot reach the token endpoint"]);
    let statuses = drive(&env, Duration::from_secs(3), Duration::from_millis(50)).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    // reqwest may retry a reset on a fresh connection once; each attempt is one or two accepts.
    let attempts = exchange_attempts(&env).await;
    let accepted = relay.accepted();
    assert!((2..=6).contains(&attempts), "{attempts} attempts");
    assert!(
        accepted <= 2 * attempts as usize,
        "{accepted} connections for {attempts} attempts"
    );
    relay.set(Fault::None).await;
    assert!(recovers(&env, Duration::from_secs(20)).await.is_some());
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_black_hole_times_out_once_for_all_waiting_requests() {
    // Header mode: no warmer, so the first workload requests start the one exchange.
    let relay = Relay::start().await;
    relay.set(Fault::Blackhole).await;
    let mut env = Setup::new("auth_black_hole_times_out_once_for_all_waiting_requests")
        .subject(Subject::Header("authorization".into()))
        .env(c::ENV_EXCHANGE_TIMEOUT_SECONDS, "1")
        .env(c::ENV_TOKEN_URL, relay.url("/oauth/token"))
        .start_with(|auth, _| relay.set_target(auth.addr()))
        .await
        .unwrap();
    let subject = jwt::mint_subject("blackhole-user", Duration::from_secs(600));
    let addr = env.addr();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..50u64)
        .map(|i| {
            let subject = subject.clone();
            tokio::spawn(async move {
                let req = client::mcp_request(addr, Method::POST)
                    .header(header::AUTHORIZATION, format!("Bearer {subject}"))
                    .body(Full::new(Bytes::from(
                        client::jsonrpc(i, "tools/list").to_string(),
                    )))
                    .unwrap();
                client::send(addr, req).await
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        let r = t
            .await
            .unwrap()
            .expect("every waiting request gets an answer");
        assert_sidecar_error(&r, 503, &["timed out"]);
        answered += 1;
    }
    let took = t0.elapsed();
    assert_eq!(answered, 50);
    assert!(
        took < Duration::from_secs(4),
        "1 s exchange timeout, answered after {took:?}"
    );
    assert_eq!(
        exchange_attempts(&env).await,
        1,
        "one exchange (single flight) for 50 waiting requests"
    );
    relay.set(Fault::None).await;
    let req = || {
        env.request(Method::POST)
            .header(header::AUTHORIZATION, format!("Bearer {subject}"))
            .body(Full::new(Bytes::from(
                client::jsonrpc(9, "tools/list").to_string(),
            )))
            .unwrap()
    };
    let mut ok = false;
    for _ in 0..100 {
        if env.send(req()).await.unwrap().status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "serves again after the backoff once Civic Auth answers");
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_429_retry_after_passed_to_workload_then_exactly_one_retry() {
    let mut env = Setup::new("auth_429_retry_after_passed_to_workload_then_exactly_one_retry")
        .readiness(Readiness::Live)
        .start_with(|auth, _| {
            auth.set_script(|n, _| {
                Some(if n == 0 {
                    AuthReply::too_many_requests(3)
                } else {
                    AuthReply::ok()
                })
            })
        })
        .await
        .unwrap();
    let r = env.call(1).await.unwrap();
    assert_sidecar_error(&r, 503, &["rate limited"]);
    assert_retry_after(&r, 1..=3);
    let t0 = env.auth.requests()[0].at;
    // Within Retry-After: answered 503 from the remembered failure, no new call.
    let statuses = drive(&env, Duration::from_millis(1500), Duration::from_millis(50)).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(env.auth.calls(), 1);
    let took = recovers(&env, Duration::from_secs(10))
        .await
        .expect("recovers");
    assert!(
        env.auth.requests()[1].at.duration_since(t0) >= Duration::from_millis(2900),
        "the retry waited for Retry-After: 3"
    );
    assert_eq!(env.auth.calls(), 2, "exactly one retry after Retry-After");
    eprintln!("429 Retry-After 3: recovered {took:?} after the polling started");
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_unusable_2xx_answers_are_precise_502s_backed_off() {
    let cases: Vec<(&str, AuthReply, &str)> = vec![
        (
            "not_json",
            AuthReply::malformed_json(),
            "malformed response: body is not JSON",
        ),
        (
            "no_access_token",
            AuthReply::missing_access_token(),
            "access_token is missing",
        ),
        (
            "huge_body",
            AuthReply::huge_body(8 * 1024 * 1024),
            "malformed response",
        ),
        (
            "json_array",
            AuthReply::raw(200, "application/json", Bytes::from_static(b"[1,2]")),
            "not a JSON object",
        ),
        (
            "empty_token",
            AuthReply::raw(
                200,
                "application/json",
                Bytes::from_static(br#"{"access_token":"","token_type":"Bearer"}"#),
            ),
            "access_token is empty",
        ),
        (
            "token_not_header_safe",
            AuthReply::raw(
                200,
                "application/json",
                Bytes::from_static(b"{\"access_token\":\"a b\\r\\nx-injected: 1\"}"),
            ),
            "not allowed in a header",
        ),
        (
            "token_type_mac",
            AuthReply::raw(
                200,
                "application/json",
                Bytes::from_static(br#"{"access_token":"abc","token_type":"mac"}"#),
            ),
            "token_type is not Bearer",
        ),
        (
            "html_200",
            AuthReply::raw(
                200,
                "text/html",
                Bytes::from_static(b"<html>captive portal</html>"),
            ),
            "body is not JSON",
        ),
    ];
    let mut survived = 0;
    for (name, reply, message) in cases {
        let test = format!("auth_unusable_2xx_{name}");
        let mut env = Setup::new(&test)
            .readiness(Readiness::Live)
            .start_with(move |auth, _| auth.set_default(reply))
            .await
            .unwrap();
        let r = env.call(1).await.unwrap();
        assert_sidecar_error(&r, 502, &[message]);
        assert!(
            r.header("retry-after").is_none(),
            "{name}: 502, no Retry-After"
        );
        let statuses = drive(&env, Duration::from_secs(2), Duration::from_millis(50)).await;
        assert!(statuses.iter().all(|s| *s == 502), "{name}: {statuses:?}");
        let calls = env.auth.calls();
        assert!(
            (1..=4).contains(&calls),
            "{name}: backoff bounds the attempts: {calls} calls for {} requests",
            statuses.len() + 1
        );
        assert_eq!(env.hub.request_count(), 0, "{name}: nothing forwarded");
        env.auth.set_default(AuthReply::ok());
        assert!(
            recovers(&env, Duration::from_secs(15)).await.is_some(),
            "{name}: recovers"
        );
        assert_alive(&mut env).await;
        env.finish();
        survived += 1;
    }
    eprintln!("{survived} unusable token responses survived");
}

// ---------------------------------------------------------------------------------------------
// Hub faults.

fn hub_via(relay: &Relay, name: &str) -> Setup {
    Setup::new(name).hub_url(relay.url("/hub/mcp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refused_502_no_reexchange_then_recovers() {
    let relay = Relay::start().await;
    let mut env = hub_via(&relay, "hub_refused_502_no_reexchange_then_recovers")
        .start_with(|_, hub| relay.set_target(hub.addr()))
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    relay.set(Fault::Refuse).await;
    let r = env.call(2).await.unwrap();
    assert_sidecar_error(&r, 502, &["cannot reach the MCP hub"]);
    let statuses = drive(&env, Duration::from_secs(2), Duration::from_millis(20)).await;
    assert!(statuses.iter().all(|s| *s == 502), "{statuses:?}");
    assert_eq!(
        env.auth.calls(),
        1,
        "a hub outage is not a reason to exchange again"
    );
    relay.set(Fault::None).await;
    let took = recovers(&env, Duration::from_secs(5)).await;
    assert!(took.is_some(), "serves again at once when the hub is back");
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_resets_before_response_502() {
    let relay = Relay::start().await;
    let mut env = hub_via(&relay, "hub_resets_before_response_502")
        .start_with(|_, hub| relay.set_target(hub.addr()))
        .await
        .unwrap();
    relay.set(Fault::Reset).await;
    for i in 0..20 {
        let r = env.call(i).await.unwrap();
        assert_sidecar_error(
            &r,
            502,
            &["hub connection failed", "cannot reach the MCP hub"],
        );
    }
    assert_eq!(env.hub.request_count(), 0);
    relay.set(Fault::None).await;
    assert!(recovers(&env, Duration::from_secs(5)).await.is_some());
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_tls_handshake_never_completes_504_after_connect_timeout() {
    let relay = Relay::start().await;
    let mut env = Setup::new("hub_tls_handshake_never_completes_504_after_connect_timeout")
        .tls()
        .hub_url(format!("https://localhost:{}/hub/mcp", relay.addr.port()))
        .start_with(|_, hub| relay.set_target(hub.addr()))
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200, "TLS via the relay");
    relay.set(Fault::Blackhole).await;
    let t0 = Instant::now();
    let r = env.call(2).await.unwrap();
    let took = t0.elapsed();
    // The first request's kept-alive connection is per workload connection: this is a new one.
    assert_sidecar_error(&r, 504, &["timed out connecting to the MCP hub"]);
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "connect + TLS bounded by 10 s, took {took:?}"
    );
    relay.set(Fault::None).await;
    assert!(recovers(&env, Duration::from_secs(5)).await.is_some());
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_cut_mid_stream_workload_sees_truncated_stream_not_clean_end() {
    let relay = Relay::start().await;
    let mut env = hub_via(
        &relay,
        "hub_cut_mid_stream_workload_sees_truncated_stream_not_clean_end",
    )
    .start_with(|_, hub| relay.set_target(hub.addr()))
    .await
    .unwrap();
    let events: Vec<SseStep> = (0..50)
        .flat_map(|i| {
            [
                SseStep::Event(format!("id: {i}\nevent: message\ndata: {{\"n\":{i}}}\n\n")),
                SseStep::Wait(Duration::from_millis(20)),
            ]
        })
        .collect();
    env.hub.push(HubReply::sse(events));
    // Head (~250 bytes) plus a few events, then a reset towards the sidecar.
    relay.set(Fault::CutAfter(600)).await;
    let req = env
        .request(Method::POST)
        .body(Full::new(Bytes::from(
            client::jsonrpc(1, "tools/call").to_string(),
        )))
        .unwrap();
    let resp = client::open(env.addr(), req).await.unwrap();
    assert_eq!(resp.status, 200);
    let mut sse = resp.into_sse();
    let mut got = 0;
    let end = loop {
        match sse.next_event(Duration::from_secs(5)).await {
            Ok(Some(_)) => got += 1,
            other => break other,
        }
    };
    assert!(got >= 1, "events before the cut arrive");
    assert!(got < 50, "the stream was cut ({got} events)");
    assert!(
        end.is_err(),
        "a cut upstream must not look like a complete stream to the workload: {end:?}"
    );
    relay.set(Fault::None).await;
    assert!(recovers(&env, Duration::from_secs(5)).await.is_some());
    assert_eq!(
        metric_sum(
            &env.sidecar.metrics().await.unwrap(),
            "civic_sidecar_open_streams"
        ),
        0,
        "the cut stream is not counted as open"
    );
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_closes_idle_connections_next_request_reconnects() {
    let relay = Relay::start().await;
    relay
        .set(Fault::IdleClose(Duration::from_millis(150)))
        .await;
    let mut env = hub_via(
        &relay,
        "hub_closes_idle_connections_next_request_reconnects",
    )
    .start_with(|_, hub| relay.set_target(hub.addr()))
    .await
    .unwrap();
    let mut conn = KeepAlive::connect(env.addr()).await.unwrap();
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(conn.call(i).await.unwrap().0);
        // Longer than the hub's idle timeout: the upstream connection is gone by the next one.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        statuses,
        vec![200; 6],
        "no 502 from a stale upstream connection"
    );
    // The hub connections are pooled, not per workload connection: the hub's connection ids
    // (one per relayed connection) tell which ones carried the requests.
    let hub_connections = |from: usize| {
        let mut ids: Vec<usize> = env.hub.requests()[from..]
            .iter()
            .map(|r| r.connection)
            .collect();
        ids.dedup();
        ids
    };
    assert_eq!(
        hub_connections(0).len(),
        6,
        "one new upstream connection per request"
    );
    // Back-to-back: reused, not reopened.
    for i in 10..15 {
        assert_eq!(conn.call(i).await.unwrap().0, 200);
    }
    assert_eq!(hub_connections(6).len(), 1, "kept alive while in use");
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_401_forever_each_request_bounded_to_one_replay_then_recovers() {
    let mut env = Setup::new("hub_401_forever_each_request_bounded_to_one_replay_then_recovers")
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let (hub0, auth0) = (env.hub.request_count(), env.auth.calls());
    env.hub.set_validator(|_| false);
    let n = 20;
    for i in 0..n {
        let r = env.call(100 + i).await.unwrap();
        assert_sidecar_error(&r, 502, &["rejected the exchanged token"]);
        assert!(r.header("www-authenticate").is_none());
    }
    let hub_requests = env.hub.request_count() - hub0;
    let exchanges = env.auth.calls() - auth0;
    eprintln!("401 forever: {n} requests → {hub_requests} hub requests, {exchanges} exchanges");
    assert_eq!(
        hub_requests,
        2 * n as usize,
        "one request plus one replay each"
    );
    // Each request: the previous request dropped the rejected token, so one exchange for the
    // request and one for the replay. Bounded per request, but not backed off (SECURITY.md).
    assert!(
        exchanges <= 2 * n as usize,
        "at most two exchanges per workload request ({exchanges})"
    );
    env.hub
        .set_validator(civic_testkit::hub::issued_by_fake_auth);
    assert!(recovers(&env, Duration::from_secs(5)).await.is_some());
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_workload_reader_backpressure_bounds_memory_and_loses_nothing() {
    let mut env = Setup::new("slow_workload_reader_backpressure_bounds_memory_and_loses_nothing")
        .start()
        .await
        .unwrap();
    // 256 events of 64 KiB (16 MiB) as fast as the hub can send them.
    let payload = "x".repeat(64 * 1024);
    let events: Vec<SseStep> = (0..256)
        .map(|i| SseStep::Event(format!("id: {i}\ndata: {payload}\n\n")))
        .collect();
    let total: usize = events
        .iter()
        .map(|e| match e {
            SseStep::Event(s) => s.len(),
            SseStep::Wait(_) => 0,
        })
        .sum();
    env.hub.push(HubReply::sse(events));
    let before = env.sidecar.rss_kib().unwrap();
    let req = env
        .request(Method::POST)
        .body(Full::new(Bytes::from(
            client::jsonrpc(1, "tools/call").to_string(),
        )))
        .unwrap();
    let mut resp = client::open(env.addr(), req).await.unwrap();
    // Do not read for 2 s: the hub is pushed back, the sidecar does not buffer the stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = env.sidecar.rss_kib().unwrap();
    let body = resp.read_to_end(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        body.len(),
        total,
        "every byte arrives once the reader reads"
    );
    let ids = String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("id: "))
        .count();
    assert_eq!(ids, 256);
    let growth = stalled.saturating_sub(before);
    eprintln!(
        "slow reader: RSS {before} KiB → {stalled} KiB while stalled on a {total}-byte stream"
    );
    assert!(
        growth < 4 * 1024,
        "a stalled reader must not make the sidecar buffer the stream: +{growth} KiB"
    );
    assert_alive(&mut env).await;
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// Subject token and client secret files.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_file_missing_or_empty_503_no_exchange_then_recovers() {
    for (name, break_it) in [
        (
            "missing",
            (|p: &std::path::Path| std::fs::remove_file(p).unwrap()) as fn(&std::path::Path),
        ),
        ("empty", |p: &std::path::Path| {
            civic_testkit::fs::write_file(p, "\n")
        }),
    ] {
        let mut env = Setup::new(&format!("subject_file_{name}"))
            .readiness(Readiness::Live)
            .start()
            .await
            .unwrap();
        break_it(&env.subject_file);
        // Force a fresh exchange need: the cached token would otherwise still be served.
        // (The file is read on every request; an unreadable file means no subject at all.)
        let want = if name == "missing" {
            "subject token file"
        } else {
            "is empty"
        };
        let r = env.call(1).await.unwrap();
        assert_sidecar_error(&r, 503, &[want]);
        assert_retry_after(&r, 1..=10);
        let calls = env.auth.calls();
        let statuses = drive(&env, Duration::from_secs(1), Duration::from_millis(50)).await;
        assert!(statuses.iter().all(|s| *s == 503), "{name}: {statuses:?}");
        assert_eq!(
            env.auth.calls(),
            calls,
            "{name}: no exchange without a subject"
        );
        let (code, text) = readyz(&env).await;
        assert_eq!(code, 503, "{name}: not ready");
        assert!(text.contains(want), "{name}: /readyz says why: {text}");
        let fresh = jwt::mint_subject("restored", Duration::from_secs(900));
        env.rotate_subject(&fresh);
        let took = recovers(&env, Duration::from_secs(5)).await;
        assert!(
            took.is_some(),
            "{name}: serves once the kubelet writes the file"
        );
        assert_secret_eq!(
            env.auth.requests().last().unwrap().field("subject_token"),
            Some(fresh.as_str())
        );
        assert_alive(&mut env).await;
        env.finish();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_expired_502_then_rotation_recovers_at_once() {
    let mut env = Setup::new("subject_expired_502_then_rotation_recovers_at_once")
        .readiness(Readiness::Live)
        .start()
        .await
        .unwrap();
    let expired = jwt::mint_subject_at("expired-sa", jwt::now_unix() - 30);
    env.rotate_subject(&expired);
    let r = env.call(1).await.unwrap();
    assert_sidecar_error(&r, 502, &["invalid_grant"]);
    let calls = env.auth.calls();
    let statuses = drive(&env, Duration::from_secs(1), Duration::from_millis(50)).await;
    assert!(statuses.iter().all(|s| *s == 502), "{statuses:?}");
    assert!(
        env.auth.calls() <= calls + 2,
        "the rejected subject is backed off"
    );
    let fresh = jwt::mint_subject("fresh-sa", Duration::from_secs(900));
    env.rotate_subject(&fresh);
    let took = recovers(&env, Duration::from_secs(3)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(1)),
        "a new subject is a new cache key: no backoff inherited ({took:?})"
    );
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_near_expiry_caps_the_cached_token() {
    // Civic Auth says 3600 s, but the subject expires in 8 s: the token must not outlive it.
    let env = Setup::new("subject_near_expiry_caps_the_cached_token")
        .readiness(Readiness::Live)
        .start()
        .await
        .unwrap();
    let short = jwt::mint_subject("short-lived-sa", Duration::from_secs(8));
    env.rotate_subject(&short);
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let metrics = env.sidecar.metrics().await.unwrap();
    let expiry: f64 = metrics
        .lines()
        .find(|l| l.starts_with("civic_sidecar_token_expiry_seconds"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("token expiry gauge");
    assert!(
        expiry > 0.0 && expiry <= 4.5,
        "usable ≤ 8 − min(30, 8/2) = 4 s, gauge says {expiry}"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_file_missing_503_then_restored() {
    let mut env = Setup::new("secret_file_missing_503_then_restored")
        .subject(Subject::Header("authorization".into()))
        .start()
        .await
        .unwrap();
    std::fs::remove_file(&env.secret_file).unwrap();
    let subject = jwt::mint_subject("secretless", Duration::from_secs(600));
    let send = || {
        env.send(
            env.request(Method::POST)
                .header(header::AUTHORIZATION, format!("Bearer {subject}"))
                .body(Full::new(Bytes::from(
                    client::jsonrpc(1, "tools/list").to_string(),
                )))
                .unwrap(),
        )
    };
    let r = send().await.unwrap();
    assert_sidecar_error(&r, 503, &["client secret file"]);
    assert_eq!(env.auth.calls(), 0, "no exchange without the secret");
    civic_testkit::fs::write_file(&env.secret_file, CLIENT_SECRET);
    assert_eq!(
        send().await.unwrap().status,
        200,
        "read again on the next use"
    );
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_revoked_before_file_rotates_502_then_file_rotation_recovers() {
    let mut env = Setup::new("secret_revoked_before_file_rotates_502_then_file_rotation_recovers")
        .readiness(Readiness::Live)
        .start()
        .await
        .unwrap();
    // Civic Auth revokes the old secret; a new subject forces an exchange with it.
    env.auth.set_client_secrets(&[CLIENT_SECRET_ROTATED]);
    env.rotate_subject(&jwt::mint_subject("sa-2", Duration::from_secs(900)));
    let r = env.call(1).await.unwrap();
    assert_sidecar_error(&r, 502, &["invalid_client"]);
    // The kubelet updates the Secret volume: the next use reads it, a new key, no backoff.
    civic_testkit::fs::write_file(&env.secret_file, CLIENT_SECRET_ROTATED);
    let took = recovers(&env, Duration::from_secs(3)).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "{took:?}");
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_and_subject_rotated_mid_load_no_request_fails() {
    // Short tokens so refreshes happen during the load; Civic Auth accepts both secrets during
    // the rotation (the documented procedure), then revokes the old one.
    let mut env = Setup::new("secret_and_subject_rotated_mid_load_no_request_fails")
        .start_with(|auth, _| {
            auth.set_default(AuthReply::ok_expires_in(4));
            auth.set_client_secrets(&[CLIENT_SECRET, CLIENT_SECRET_ROTATED]);
        })
        .await
        .unwrap();
    let addr = env.addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r =
                        client::post_mcp(addr, &client::jsonrpc(w * 1_000_000 + i, "tools/list"))
                            .await;
                    statuses.push(r.map(|r| r.status).unwrap_or(0));
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    civic_testkit::fs::write_file(&env.secret_file, CLIENT_SECRET_ROTATED);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    env.rotate_subject(&jwt::mint_subject("sa-rotated", Duration::from_secs(900)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.auth.set_client_secrets(&[CLIENT_SECRET_ROTATED]);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let failed: Vec<u16> = all.iter().copied().filter(|s| *s != 200).collect();
    eprintln!(
        "rotation under load: {} requests, {} exchanges, failures {failed:?}",
        all.len(),
        env.auth.calls()
    );
    assert!(all.len() > 100, "load was applied ({} requests)", all.len());
    assert!(failed.is_empty(), "no request failed: {failed:?}");
    let reqs = env.auth.requests();
    assert!(reqs.iter().all(|r| r.outcome == "issued"), "{reqs:?}");
    let last = reqs.last().unwrap();
    assert_secret_eq!(
        last.basic.as_ref().map(|b| b.1.as_str()),
        Some(CLIENT_SECRET_ROTATED),
        "exchanges after the rotation use the new secret"
    );
    assert!(
        env.auth.calls() >= 3,
        "refreshes and the subject rotation caused exchanges ({})",
        env.auth.calls()
    );
    assert_alive(&mut env).await;
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_absurd_lifetimes_do_not_crash_the_sidecar() {
    // Opaque subjects carry no `exp` to cap the lifetime, so the issued one is taken as is.
    let opaque = |body: &'static str| {
        AuthReply::raw(200, "application/json", Bytes::from_static(body.as_bytes()))
    };
    let cases = [
        (
            "float",
            opaque(r#"{"access_token":"opaque-a","token_type":"Bearer","expires_in":1e300}"#),
        ),
        (
            "u64 max",
            opaque(
                r#"{"access_token":"opaque-b","token_type":"Bearer","expires_in":18446744073709551615}"#,
            ),
        ),
        (
            "string",
            opaque(
                r#"{"access_token":"opaque-c","token_type":"Bearer","expires_in":"18446744073709551615"}"#,
            ),
        ),
        // JWT `exp` far in the future, no expires_in.
        (
            "jwt exp",
            opaque(
                r#"{"access_token":"eyJhbGciOiJub25lIn0.eyJleHAiOjkyMjMzNzIwMzY4NTQ3NzU4MDd9.c2ln","token_type":"Bearer"}"#,
            ),
        ),
    ];
    for (name, reply) in cases {
        let mut env = Setup::new(&format!("auth_absurd_lifetime_{}", name.replace(' ', "_")))
            .subject(Subject::Header("x-user-token".into()))
            .start_with(move |auth, hub| {
                auth.set_default(reply);
                hub.set_validator(|_| true);
            })
            .await
            .unwrap();
        let req = env
            .request(Method::POST)
            .header("x-user-token", "opaque-subject-without-exp")
            .body(Full::new(Bytes::from(
                client::jsonrpc(1, "tools/list").to_string(),
            )))
            .unwrap();
        let r = env.send(req).await;
        assert!(
            env.sidecar.is_running(),
            "{name}: the sidecar must not crash"
        );
        assert_eq!(r.unwrap().status, 200, "{name}: the token is used");
        assert_alive(&mut env).await;
        env.finish();
    }
}
