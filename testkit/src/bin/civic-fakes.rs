//! `civic-fakes`: the testkit's fake Civic Auth and fake hub as one in-cluster server, for the
//! kind end-to-end suite (`tests/e2e/`).
//!
//! - Fake Civic Auth (`FakeCivicAuth`, scripted): RFC 8693 token exchange at `/oauth/token`.
//!   Clients authenticate with HTTP Basic against `--client-id` and the currently accepted
//!   secrets (settable through the control port, so a rotation can be tested). The subject must
//!   be a JWT for `--audience` whose `sub` is a Kubernetes service account (a projected token;
//!   its signature is the cluster's and is not checked). It issues HS256 access tokens carrying
//!   `civic_profile` when the exchange asked for it.
//! - Fake hub (`FakeHub`): `/hub/mcp` accepts only unrevoked tokens the fake Auth issued whose
//!   `civic_profile` claim is `--profile-id`, and answers like the hub: SSE `event: message`
//!   frames, an `Mcp-Session-Id`, the tools `whoami` (the token's `sub` and `civic_profile`).
//! - Both fakes listen on loopback (as in every other test); this binary fronts each with a TLS
//!   terminating TCP relay on `0.0.0.0` using `--tls-cert`/`--tls-key`, because the sidecar and
//!   the CRD accept plain HTTP only on loopback.
//! - Control port (plain HTTP): `GET /healthz`, `GET /stats`, `PUT /client-secrets` (one
//!   secret per line), `POST /revoke` (the hub rejects every token issued so far).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;
use civic_testkit::auth::{AuthReply, ExchangeRequest, FakeCivicAuth, GRANT_TYPE_TOKEN_EXCHANGE};
use civic_testkit::hub::{FakeHub, HubReply, RecordedRequest, issued_by_fake_auth, sse_message};
use civic_testkit::jwt;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// Default lifetime of issued tokens when the exchange asks for none.
const DEFAULT_TTL_SECS: u64 = 3600;

#[derive(Debug, Parser)]
#[command(
    name = "civic-fakes",
    about = "In-cluster fake Civic Auth and hub for the kind e2e suite"
)]
struct Args {
    /// TLS listener of the fake Civic Auth token endpoint.
    #[arg(long, env = "FAKES_AUTH_ADDR", default_value = "0.0.0.0:8443")]
    auth_addr: SocketAddr,
    /// TLS listener of the fake hub.
    #[arg(long, env = "FAKES_HUB_ADDR", default_value = "0.0.0.0:9443")]
    hub_addr: SocketAddr,
    /// Plain-HTTP control listener.
    #[arg(long, env = "FAKES_CONTROL_ADDR", default_value = "0.0.0.0:8080")]
    control_addr: SocketAddr,
    /// PEM certificate chain served on both TLS listeners.
    #[arg(long, env = "FAKES_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, env = "FAKES_TLS_KEY")]
    tls_key: PathBuf,
    /// The client ID the fake Auth accepts.
    #[arg(long, env = "FAKES_CLIENT_ID")]
    client_id: String,
    /// File with the client secrets accepted at start, one per line.
    #[arg(long, env = "FAKES_CLIENT_SECRET_FILE")]
    client_secret_file: PathBuf,
    /// Audience subject tokens must carry.
    #[arg(long, env = "FAKES_AUDIENCE", default_value = "civic")]
    audience: String,
    /// The profile UUID the hub requires in the token's `civic_profile` claim.
    #[arg(long, env = "FAKES_PROFILE_ID")]
    profile_id: String,
}

/// Counters the control port reports; no secret or token is ever stored here.
#[derive(Default)]
struct Stats {
    exchanges: AtomicUsize,
    issued: AtomicUsize,
    invalid_client: AtomicUsize,
    invalid_grant: AtomicUsize,
    invalid_request: AtomicUsize,
    /// Issued tokens per index of the accepted secret used (0 = first line).
    issued_by_secret: Mutex<Vec<usize>>,
    /// Exchanges that asked for `civic_profile`.
    profile_locked: AtomicUsize,
}

struct Fakes {
    client_id: String,
    audience: String,
    secrets: Mutex<Vec<String>>,
    issued_tokens: Mutex<Vec<String>>,
    stats: Stats,
}

impl Fakes {
    /// Decides one exchange; mirrors the checks Civic documents (protocol.md §1).
    fn exchange(&self, req: &ExchangeRequest) -> AuthReply {
        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        let secret_index = req.basic.as_ref().and_then(|(id, secret)| {
            (*id == self.client_id)
                .then(|| {
                    self.secrets
                        .lock()
                        .unwrap()
                        .iter()
                        .position(|s| s == secret)
                })
                .flatten()
        });
        let Some(secret_index) = secret_index else {
            self.stats.invalid_client.fetch_add(1, Ordering::Relaxed);
            return AuthReply::error(401, "invalid_client");
        };
        let well_formed = req.method == "POST"
            && req.path == "/oauth/token"
            && req.field("grant_type") == Some(GRANT_TYPE_TOKEN_EXCHANGE)
            && req.field("subject_token_type").is_some()
            && req.field_count("subject_token") == 1
            && req.field("civic_account").is_none();
        if !well_formed {
            self.stats.invalid_request.fetch_add(1, Ordering::Relaxed);
            return AuthReply::error(400, "invalid_request");
        }
        let subject = req.field("subject_token").unwrap_or_default();
        let Some(sub_exp) = self.subject_expiry(subject) else {
            self.stats.invalid_grant.fetch_add(1, Ordering::Relaxed);
            return AuthReply::error(400, "invalid_grant");
        };
        let claims = jwt::decode_unverified(subject).unwrap_or_default();
        let sub = claims["sub"].as_str().unwrap_or("unknown");
        let profile = req.field("civic_profile");
        if profile.is_some() {
            self.stats.profile_locked.fetch_add(1, Ordering::Relaxed);
        }
        // Civic bounds the lifetime by the request and by the subject's remaining validity.
        let now = jwt::now_unix();
        let requested = req
            .field("expires_in")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_TTL_SECS);
        let ttl = requested.min(sub_exp.saturating_sub(now)).max(1);
        let token = jwt::mint_access(sub, Some(now + ttl), profile);
        self.issued_tokens.lock().unwrap().push(token.clone());
        self.stats.issued.fetch_add(1, Ordering::Relaxed);
        {
            let mut by_secret = self.stats.issued_by_secret.lock().unwrap();
            if by_secret.len() <= secret_index {
                by_secret.resize(secret_index + 1, 0);
            }
            by_secret[secret_index] += 1;
        }
        let body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
        });
        AuthReply::raw(200, "application/json", Bytes::from(body.to_string()))
    }

    /// `exp` of a service-account JWT for our audience that has not expired.
    fn subject_expiry(&self, subject: &str) -> Option<u64> {
        let claims = jwt::decode_unverified(subject)?;
        let audience_ok = match &claims["aud"] {
            Value::String(a) => *a == self.audience,
            Value::Array(list) => list.iter().any(|a| a.as_str() == Some(&self.audience)),
            _ => false,
        };
        let is_service_account = claims["sub"]
            .as_str()
            .is_some_and(|s| s.starts_with("system:serviceaccount:"));
        let exp = claims["exp"].as_u64()?;
        (audience_ok && is_service_account && exp > jwt::now_unix()).then_some(exp)
    }

    fn stats_json(&self, hub: &FakeHub) -> Value {
        let s = &self.stats;
        let requests = hub.requests();
        json!({
            "exchanges": s.exchanges.load(Ordering::Relaxed),
            "issued": s.issued.load(Ordering::Relaxed),
            "invalid_client": s.invalid_client.load(Ordering::Relaxed),
            "invalid_grant": s.invalid_grant.load(Ordering::Relaxed),
            "invalid_request": s.invalid_request.load(Ordering::Relaxed),
            "profile_locked_exchanges": s.profile_locked.load(Ordering::Relaxed),
            "issued_by_secret": *s.issued_by_secret.lock().unwrap(),
            "hub_requests": requests.len(),
            "hub_authorized": requests.iter().filter(|r| r.authorized).count(),
            "hub_with_profile_header": requests
                .iter()
                .filter(|r| r.header("x-civic-profile-id").is_some())
                .count(),
        })
    }
}

/// The hub accepts a token only when the fake Auth issued it for the expected profile.
fn profile_locked_validator(profile: String) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |token| {
        issued_by_fake_auth(token)
            && jwt::verify(token)
                .is_ok_and(|c| c.get("civic_profile").and_then(Value::as_str) == Some(&profile))
    }
}

/// Answers like the hub: SSE `event: message` frames, a session on initialize.
fn hub_reply(req: &RecordedRequest) -> HubReply {
    match req.method.as_str() {
        "GET" => return HubReply::status(405).header("allow", "POST, DELETE"),
        "DELETE" => return HubReply::status(200),
        _ => {}
    }
    let Some(msg) = req.json() else {
        return HubReply::json_status(
            400,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}}),
        );
    };
    let (Some(method), Some(id)) = (msg["method"].as_str(), msg.get("id")) else {
        return HubReply::accepted();
    };
    let result = match method {
        "initialize" => json!({
            "protocolVersion": msg["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
            "capabilities": {"tools": {"listChanged": true}},
            "serverInfo": {"name": "civic-fake-hub", "version": env!("CARGO_PKG_VERSION")},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [{
            "name": "whoami",
            "description": "The subject and profile of the token the hub received",
            "inputSchema": {"type": "object", "properties": {}},
        }]}),
        "tools/call" if msg["params"]["name"] == "whoami" => {
            let claims = req
                .bearer
                .as_deref()
                .and_then(jwt::decode_unverified)
                .unwrap_or_default();
            let who = json!({"sub": claims["sub"], "civic_profile": claims["civic_profile"]});
            json!({"content": [{"type": "text", "text": who.to_string()}], "isError": false})
        }
        _ => {
            let err = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}});
            return HubReply::sse(vec![civic_testkit::SseStep::Event(sse_message(&err))]);
        }
    };
    let frame = sse_message(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
    let reply = HubReply::sse(vec![civic_testkit::SseStep::Event(frame)]);
    if method == "initialize" {
        reply.header("mcp-session-id", &jwt::unique_jti("session"))
    } else {
        reply
    }
}

fn tls_acceptor(args: &Args) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&args.tls_cert)
        .with_context(|| format!("reading {}", args.tls_cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the TLS certificate")?;
    let key = PrivateKeyDer::from_pem_file(&args.tls_key)
        .with_context(|| format!("reading {}", args.tls_key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Terminates TLS on `listener` and relays each connection's bytes to `upstream` (a loopback
/// fake). Bytes pass unchanged, so HTTP/1.1 and h2 both work.
async fn relay(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, upstream: SocketAddr) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(inbound).await else {
                return;
            };
            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
        });
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn control(
    req: Request<Incoming>,
    fakes: Arc<Fakes>,
    hub: Arc<FakeHub>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    match (parts.method, parts.uri.path()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        (Method::GET, "/stats") => text(
            StatusCode::OK,
            fakes.stats_json(&hub).to_string(),
            "application/json",
        ),
        (Method::PUT, "/client-secrets") => {
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let secrets = parse_secrets(&String::from_utf8_lossy(&body));
            if secrets.is_empty() {
                return text(StatusCode::BAD_REQUEST, "no secrets\n".into(), "text/plain");
            }
            let n = secrets.len();
            *fakes.secrets.lock().unwrap() = secrets;
            fakes.stats.issued_by_secret.lock().unwrap().clear();
            eprintln!("civic-fakes: now accepting {n} client secret(s)");
            text(StatusCode::OK, format!("{n}\n"), "text/plain")
        }
        (Method::POST, "/revoke") => {
            let tokens = std::mem::take(&mut *fakes.issued_tokens.lock().unwrap());
            for t in &tokens {
                hub.revoke(t);
            }
            eprintln!("civic-fakes: revoked {} token(s)", tokens.len());
            text(StatusCode::OK, format!("{}\n", tokens.len()), "text/plain")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

fn parse_secrets(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn serve_control(listener: TcpListener, fakes: Arc<Fakes>, hub: Arc<FakeHub>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (fakes, hub) = (fakes.clone(), hub.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (fakes, hub) = (fakes.clone(), hub.clone());
                async move { Ok::<_, Infallible>(control(req, fakes, hub).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secrets = parse_secrets(
        &std::fs::read_to_string(&args.client_secret_file)
            .with_context(|| format!("reading {}", args.client_secret_file.display()))?,
    );
    anyhow::ensure!(!secrets.is_empty(), "no client secret in the secret file");
    let acceptor = tls_acceptor(&args)?;

    let fakes = Arc::new(Fakes {
        client_id: args.client_id.clone(),
        audience: args.audience.clone(),
        secrets: Mutex::new(secrets),
        issued_tokens: Mutex::new(Vec::new()),
        stats: Stats::default(),
    });
    let auth = FakeCivicAuth::start().await?;
    let decide = fakes.clone();
    auth.set_script(move |_, req| Some(decide.exchange(req)));
    let hub = Arc::new(FakeHub::start().await?);
    hub.set_validator(profile_locked_validator(args.profile_id.clone()));
    hub.set_responder(hub_reply);

    let auth_listener = TcpListener::bind(args.auth_addr).await?;
    let hub_listener = TcpListener::bind(args.hub_addr).await?;
    let control_listener = TcpListener::bind(args.control_addr).await?;
    // Bound addresses, not the requested ones: port 0 picks a free port (local runs).
    eprintln!(
        "civic-fakes: auth on {} (token endpoint /oauth/token), hub on {} (/hub/mcp), control on {}",
        auth_listener.local_addr()?,
        hub_listener.local_addr()?,
        control_listener.local_addr()?
    );
    tokio::spawn(relay(auth_listener, acceptor.clone(), auth.addr()));
    tokio::spawn(relay(hub_listener, acceptor, hub.addr()));
    tokio::spawn(serve_control(control_listener, fakes, hub));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(auth);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn fakes() -> Fakes {
        Fakes {
            client_id: "client".into(),
            audience: "civic".into(),
            secrets: Mutex::new(vec!["s1".into()]),
            issued_tokens: Mutex::new(Vec::new()),
            stats: Stats::default(),
        }
    }

    /// A service-account-shaped JWT; the fake never checks its signature.
    fn sa_token(aud: &str, sub: &str, exp: u64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims =
            json!({"aud": [aud], "sub": sub, "exp": exp, "iss": "https://kubernetes.default.svc"});
        format!(
            "{}.{}.c2ln",
            b64.encode(br#"{"alg":"RS256"}"#),
            b64.encode(claims.to_string())
        )
    }

    fn request(secret: &str, subject: &str, profile: Option<&str>) -> ExchangeRequest {
        let mut form = vec![
            (
                "grant_type".to_owned(),
                GRANT_TYPE_TOKEN_EXCHANGE.to_owned(),
            ),
            ("subject_token".to_owned(), subject.to_owned()),
            (
                "subject_token_type".to_owned(),
                civic_testkit::auth::TOKEN_TYPE_ACCESS.to_owned(),
            ),
        ];
        if let Some(p) = profile {
            form.push(("civic_profile".to_owned(), p.to_owned()));
        }
        ExchangeRequest {
            method: "POST".into(),
            path: "/oauth/token".into(),
            headers: Vec::new(),
            basic: Some(("client".into(), secret.into())),
            form,
            at: std::time::Instant::now(),
            outcome: String::new(),
            issued_token: None,
        }
    }

    fn issued_token(f: &Fakes) -> Option<String> {
        f.issued_tokens.lock().unwrap().last().cloned()
    }

    #[test]
    fn issues_profile_locked_tokens_for_service_account_subjects() {
        let f = fakes();
        let exp = jwt::now_unix() + 600;
        let subject = sa_token("civic", "system:serviceaccount:team:app", exp);
        let _ = f.exchange(&request("s1", &subject, Some("prof-1")));
        let token = issued_token(&f).expect("a token was issued");
        let claims = jwt::verify(&token).expect("signed by the fake");
        assert_eq!(claims["civic_profile"], "prof-1");
        assert_eq!(claims["sub"], "system:serviceaccount:team:app");
        assert!(
            claims["exp"].as_u64().unwrap() <= exp,
            "bounded by the subject"
        );
        assert!(profile_locked_validator("prof-1".into())(&token));
        assert!(!profile_locked_validator("prof-2".into())(&token));
        assert_eq!(*f.stats.issued_by_secret.lock().unwrap(), vec![1]);
    }

    #[test]
    fn rejects_bad_clients_and_subjects() {
        let f = fakes();
        let good = sa_token(
            "civic",
            "system:serviceaccount:team:app",
            jwt::now_unix() + 600,
        );
        let _ = f.exchange(&request("wrong", &good, None));
        assert_eq!(f.stats.invalid_client.load(Ordering::Relaxed), 1);
        for bad in [
            sa_token(
                "other",
                "system:serviceaccount:team:app",
                jwt::now_unix() + 600,
            ),
            sa_token("civic", "alice", jwt::now_unix() + 600),
            sa_token(
                "civic",
                "system:serviceaccount:team:app",
                jwt::now_unix() - 1,
            ),
            "not-a-jwt".to_owned(),
        ] {
            let _ = f.exchange(&request("s1", &bad, None));
        }
        assert_eq!(f.stats.invalid_grant.load(Ordering::Relaxed), 4);
        assert!(issued_token(&f).is_none());
        // An unlocked token (no civic_profile) is refused by the hub.
        let _ = f.exchange(&request("s1", &good, None));
        let unlocked = issued_token(&f).expect("issued");
        assert!(!profile_locked_validator("prof-1".into())(&unlocked));
    }

    #[test]
    fn rotation_switches_the_accepted_secret() {
        let f = fakes();
        let subject = sa_token(
            "civic",
            "system:serviceaccount:team:app",
            jwt::now_unix() + 600,
        );
        *f.secrets.lock().unwrap() = parse_secrets("\n s2 \n");
        let _ = f.exchange(&request("s1", &subject, None));
        assert_eq!(f.stats.invalid_client.load(Ordering::Relaxed), 1);
        let _ = f.exchange(&request("s2", &subject, None));
        assert_eq!(f.stats.issued.load(Ordering::Relaxed), 1);
    }
}
