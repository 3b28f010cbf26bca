//! The sidecar's request handling end to end in one process: raw bytes from the workload go
//! through hyper's HTTP/1 server into the real `Proxy` service (header-mode subjects, a
//! profile-locked binding with two more named profiles, a fake exchanger that mints one token
//! per profile), which forwards to a dummy hub on 127.0.0.1.
//!
//! Never panics, never hangs (2 s per input). Whatever the input, a request that reaches the
//! hub is a POST, GET or DELETE of the hub path, carries exactly one of the binding's profiles
//! in one profile header and exactly the token locked to that profile, no workload hop-by-hop
//! or proxy header, no profile-unlocking query parameter; and nothing the workload gets back
//! contains an access token.
#![no_main]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use civic_sidecar::config::Config;
use civic_sidecar::contract as c;
use civic_sidecar::exchange::{
    ClientCredentials, Exchange, ExchangeError, ExchangeRequest, ExchangedToken, Lifetime,
};
use civic_sidecar::metrics::Metrics;
use civic_sidecar::proxy::Proxy;
use civic_sidecar::secret::Secret;
use civic_sidecar::token::TokenSource;
use civic_sidecar::upstream::Upstream;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ACCESS_TOKEN: &str = "fuzz-access-token-7f3a9c";
const PROFILE: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const SUPPORT: &str = "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11";
const BILLING: &str = "c1f0e9d8-2b3a-4c5d-8e7f-a0b1c2d3e4f5";
/// Every profile the binding lists; no other may reach the hub.
const LISTED: [&str; 3] = [PROFILE, SUPPORT, BILLING];
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// The token the fake exchanger issues for `profile` (the same for every subject).
fn token_for(profile: &str) -> String {
    format!("{ACCESS_TOKEN}.{profile}")
}

/// Issues one token per profile, for every subject.
struct FakeExchange;

impl Exchange for FakeExchange {
    fn exchange(
        &self,
        _: &ClientCredentials,
        request: &ExchangeRequest,
    ) -> impl Future<Output = Result<ExchangedToken, ExchangeError>> + Send {
        let profile = request.profile.map(|p| p.to_string()).unwrap_or_default();
        std::future::ready(Ok(ExchangedToken {
            access_token: Secret::new(token_for(&profile)),
            issued_token_type: None,
            expires_in: Some(3600),
            received_at: tokio::time::Instant::now(),
            lifetime: Lifetime {
                refresh_after: Duration::from_secs(3000),
                expires_after: Duration::from_secs(3570),
            },
        }))
    }
}

/// What the dummy hub saw: method, path and query, headers.
type Seen = (http::Method, http::Uri, http::HeaderMap);

struct World {
    runtime: tokio::runtime::Runtime,
    proxy: Arc<Proxy<FakeExchange>>,
    hub: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (hub, proxy) = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind hub");
            let hub = listener.local_addr().expect("hub addr");
            tokio::spawn(serve_hub(listener, seen.clone()));
            let dir = std::env::temp_dir().join(format!("civic-fuzz-proxy-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let secret = dir.join("client-secret");
            std::fs::write(&secret, "fuzz-client-secret").expect("secret");
            let env: HashMap<String, String> = [
                (c::ENV_HUB_URL, format!("http://{hub}/hub/mcp")),
                (c::ENV_TOKEN_URL, "http://127.0.0.1:9/oauth/token".to_string()),
                (c::ENV_CLIENT_ID, "fuzz-client".to_string()),
                (c::ENV_CLIENT_SECRET_FILE, secret.to_string_lossy().into_owned()),
                (c::ENV_SUBJECT_HEADER, "authorization".to_string()),
                (c::ENV_PROFILE_ID, PROFILE.to_string()),
                (c::ENV_PROFILES, format!("support={SUPPORT},billing-tools={BILLING}")),
                (c::ENV_MAX_BODY_BYTES, "65536".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let config = Config::parse(["civic-sidecar"], &env).expect("config");
            let metrics = Arc::new(Metrics::new());
            let tokens = Arc::new(TokenSource::new(
                &config,
                Arc::new(FakeExchange),
                metrics.clone(),
            ));
            let tls = civic_sidecar::tls::client_config(None).expect("tls");
            let upstream = Upstream::new(&config.hub_url, &tls, metrics.clone()).expect("upstream");
            (hub, Arc::new(Proxy::new(&config, tokens, upstream, metrics)))
        });
        World {
            runtime,
            proxy,
            hub,
            seen,
        }
    })
}

async fn serve_hub(listener: tokio::net::TcpListener, seen: Arc<Mutex<Vec<Seen>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let _ = body.collect().await;
                    seen.lock()
                        .expect("seen")
                        .push((parts.method, parts.uri, parts.headers));
                    let mut r = http::Response::new(Full::new(Bytes::from_static(
                        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                    )));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn check_forwarded(hub: SocketAddr, (method, uri, headers): &Seen) {
    assert!(
        matches!(*method, http::Method::POST | http::Method::GET | http::Method::DELETE),
        "{method} reached the hub"
    );
    assert_eq!(uri.path(), "/hub/mcp");
    let profile: Vec<_> = headers.get_all("x-civic-profile-id").iter().collect();
    assert_eq!(profile.len(), 1, "one profile header");
    let profile = profile[0].to_str().expect("a UUID");
    assert!(LISTED.contains(&profile), "unlisted profile {profile} reached the hub");
    let auth: Vec<_> = headers.get_all(http::header::AUTHORIZATION).iter().collect();
    assert_eq!(auth.len(), 1, "one Authorization");
    assert_eq!(
        auth[0],
        format!("Bearer {}", token_for(profile)).as_str(),
        "the token is the one locked to the profile header's profile"
    );
    let host: Vec<_> = headers.get_all(http::header::HOST).iter().collect();
    assert_eq!(host, [hub.to_string().as_str()], "Host is the hub's");
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(name), "{name} forwarded");
    }
    if let Some(query) = uri.query() {
        for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
            assert!(
                !civic_sidecar::headers::PROFILE_QUERY_PARAMS.contains(&name.as_ref()),
                "profile parameter {name} reached the hub"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.seen.lock().expect("seen").clear();
    let proxy = w.proxy.clone();
    let input = data.to_vec();
    let answer = w.runtime.block_on(async move {
        let (mut workload, server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let _ = proxy
                .serve_connection(server, std::future::pending())
                .await;
        });
        let (mut read, mut write) = tokio::io::split(&mut workload);
        let writer = async move {
            let _ = write.write_all(&input).await;
            let _ = write.shutdown().await;
        };
        let reader = async move {
            let mut out = Vec::new();
            let _ = read.read_to_end(&mut out).await;
            out
        };
        let (_, out) = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::join!(writer, reader)
        })
        .await
        .expect("the sidecar answered and closed within 2 s");
        let _ = tokio::time::timeout(Duration::from_secs(2), serve).await;
        out
    });
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains(ACCESS_TOKEN), "the access token reached the workload");
    for seen in w.seen.lock().expect("seen").iter() {
        check_forwarded(w.hub, seen);
    }
});
