//! `civic-fakes`: the testkit's fake Civic Auth and fake hub as one in-cluster server, for the
//! kind end-to-end suite (`tests/e2e/`).
//!
//! - Fake Civic Auth (`FakeCivicAuth`, scripted): RFC 8693 token exchange at `/oauth/token`.
//!   Clients authenticate with HTTP Basic against `--client-id` and the currently accepted
//!   secrets (settable through the control port, so a rotation can be tested). The subject must
//!   be a JWT for `--audience` whose `sub` is a Kubernetes service account (a projected token).
//!   Without `--jwks-file` its signature and issuer are not checked; with `--jwks-file` (the
//!   cluster's `/openid/v1/jwks`) and `--issuer` it is verified as Civic Auth would: RS256
//!   signature under a published `kid`, `iss`, `aud`, `exp`/`nbf`, and the `sub` shape. It
//!   issues HS256 access tokens carrying `civic_profile` when the exchange asked for it.
//! - Fake hub (`FakeHub`): `/hub/mcp` accepts only unrevoked tokens the fake Auth issued whose
//!   `civic_profile` claim is `--profile-id`, and answers like the hub: SSE `event: message`
//!   frames, an `Mcp-Session-Id`, the tools `whoami` (the token's `sub` and `civic_profile`) and
//!   `countdown` (a long SSE stream: `steps` progress notifications `intervalMs` apart, then the
//!   result), so a test can hold a stream open across a pod's deletion.
//! - Both fakes listen on loopback (as in every other test); this binary fronts each with a TLS
//!   terminating TCP relay on `0.0.0.0` using `--tls-cert`/`--tls-key`, because the sidecar and
//!   the CRD accept plain HTTP only on loopback.
//! - Control port (plain HTTP): `GET /healthz`, `GET /stats`, `PUT /client-secrets` (one
//!   secret per line), `POST /revoke` (the hub rejects every token issued so far).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use base64::Engine as _;
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
    /// More profile UUIDs the hub accepts tokens locked to (a binding's named profiles);
    /// comma-separated in the environment.
    #[arg(
        long = "extra-profile-id",
        env = "FAKES_EXTRA_PROFILE_IDS",
        value_delimiter = ','
    )]
    extra_profile_ids: Vec<String>,
    /// The cluster's JWKS (`kubectl get --raw /openid/v1/jwks`); when set, subject tokens must
    /// carry a valid RS256 signature under one of its keys. Re-read when the file changes.
    #[arg(long, env = "FAKES_JWKS_FILE", requires = "issuer")]
    jwks_file: Option<PathBuf>,
    /// The `iss` subject tokens must carry (only checked with `--jwks-file`).
    #[arg(long, env = "FAKES_ISSUER")]
    issuer: Option<String>,
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
    /// Tokens issued per requested `civic_profile` (a UUID, never a token).
    issued_by_profile: Mutex<BTreeMap<String, usize>>,
    /// Exchanges refused because of the subject token (a subset of `invalid_grant`).
    subject_rejected: AtomicUsize,
    /// Those refusals per JWKS-mode reason (the `error_description`).
    subject_rejected_by_reason: Mutex<BTreeMap<&'static str, usize>>,
    /// Exchanges whose subject passed JWKS verification: proof the signature was checked.
    subject_verified_with_jwks: AtomicUsize,
    /// The distinct `iat` of accepted subject tokens per subject (`sub`, never the token):
    /// a new value is a rotated subject token, e.g. the kubelet's refresh of a projected one.
    subject_issued_at: Mutex<BTreeMap<String, BTreeSet<u64>>>,
}

/// Bound of `subject_issued_at` per subject, so a long run cannot grow it without limit.
const MAX_ISSUED_AT_PER_SUBJECT: usize = 64;

/// Why a subject token was refused in JWKS mode. The description is what the client sees as
/// `error_description` and what is logged; it never contains token content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    Malformed,
    UnsupportedAlg,
    UnknownKid,
    BadSignature,
    IssuerMismatch,
    AudienceMismatch,
    NoExpiry,
    Expired,
    NotYetValid,
    NotServiceAccount,
}

impl Rejection {
    fn description(self) -> &'static str {
        match self {
            Self::Malformed => "malformed token",
            Self::UnsupportedAlg => "unsupported alg",
            Self::UnknownKid => "unknown kid",
            Self::BadSignature => "bad signature",
            Self::IssuerMismatch => "issuer mismatch",
            Self::AudienceMismatch => "audience mismatch",
            Self::NoExpiry => "no exp",
            Self::Expired => "expired",
            Self::NotYetValid => "not yet valid",
            Self::NotServiceAccount => "not a service account",
        }
    }
}

/// One RSA verification key: big-endian `n` and `e` without leading zeros (what ring wants).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

/// Identity of the file's current content as seen through the path. Kubernetes updates a
/// ConfigMap mount by swapping a symlink, so the inode changes too; size and inode guard
/// against two writes within one mtime tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    mtime: SystemTime,
    len: u64,
    dev: u64,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    // `metadata` follows symlinks: the stamp is the target's, which is what changes on a swap.
    let m = std::fs::metadata(path)?;
    Ok(FileStamp {
        mtime: m.modified()?,
        len: m.len(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// RS256 keys by `kid` from a JWKS document; non-RSA and non-signing keys are skipped.
fn parse_jwks(text: &str) -> anyhow::Result<HashMap<String, RsaKey>> {
    #[derive(serde::Deserialize)]
    struct Jwk {
        kty: String,
        kid: Option<String>,
        alg: Option<String>,
        #[serde(rename = "use")]
        use_: Option<String>,
        n: Option<String>,
        e: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct JwkSet {
        keys: Vec<Jwk>,
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let set: JwkSet = serde_json::from_str(text).context("JWKS is not a JSON key set")?;
    let mut keys = HashMap::new();
    for jwk in set.keys {
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|a| a == "RS256")
            && jwk.use_.as_deref().is_none_or(|u| u == "sig");
        let (true, Some(kid), Some(n), Some(e)) = (usable, jwk.kid, jwk.n, jwk.e) else {
            continue;
        };
        let decode = |v: &str, what: &str| {
            let bytes = b64
                .decode(v)
                .with_context(|| format!("JWKS key {kid}: {what} is not base64url"))?;
            // RFC 7518 forbids leading zeros but ring rejects them, so be lenient here.
            let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
            anyhow::Ok(bytes[first..].to_vec())
        };
        let key = RsaKey {
            n: decode(&n, "n")?,
            e: decode(&e, "e")?,
        };
        keys.insert(kid, key);
    }
    anyhow::ensure!(!keys.is_empty(), "JWKS has no RS256 signing key");
    Ok(keys)
}

/// The cluster's published keys plus the expected issuer, reloaded when the file changes.
struct Jwks {
    path: PathBuf,
    issuer: String,
    state: Mutex<(FileStamp, HashMap<String, RsaKey>)>,
}

impl Jwks {
    /// Loads the file once; a missing or unusable JWKS at start is a configuration error.
    fn load(path: PathBuf, issuer: String) -> anyhow::Result<Self> {
        anyhow::ensure!(!issuer.is_empty(), "--issuer must not be empty");
        let st = stamp(&path).with_context(|| format!("reading {}", path.display()))?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let keys = parse_jwks(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self {
            path,
            issuer,
            state: Mutex::new((st, keys)),
        })
    }

    fn key_count(&self) -> usize {
        self.state.lock().unwrap().1.len()
    }

    /// The key for `kid`, re-reading the file first if it changed since the last read. The
    /// path is stat'ed each time (no fd is kept) so a ConfigMap symlink swap is noticed. A
    /// failed re-read keeps the old keys and is retried on the next exchange.
    fn key(&self, kid: &str) -> Option<RsaKey> {
        let mut state = self.state.lock().unwrap();
        match stamp(&self.path) {
            Ok(now) if now != state.0 => {
                match std::fs::read_to_string(&self.path)
                    .map_err(anyhow::Error::from)
                    .and_then(|t| parse_jwks(&t))
                {
                    Ok(keys) => {
                        eprintln!(
                            "civic-fakes: reloaded {} JWKS key(s) from {}",
                            keys.len(),
                            self.path.display()
                        );
                        *state = (now, keys);
                    }
                    Err(e) => eprintln!(
                        "civic-fakes: keeping the previous JWKS, reloading {} failed: {e:#}",
                        self.path.display()
                    ),
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!(
                "civic-fakes: keeping the previous JWKS, cannot stat {}: {e}",
                self.path.display()
            ),
        }
        state.1.get(kid).cloned()
    }

    /// Verifies a projected service-account token; returns its `exp`. The signature is checked
    /// before any claim is trusted.
    fn verify(&self, token: &str, audience: &str, now: u64) -> Result<u64, Rejection> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed);
        };
        let json = |part: &str| {
            b64.decode(part)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(Value::is_object)
                .ok_or(Rejection::Malformed)
        };
        let header = json(h)?;
        if header["alg"] != "RS256" {
            return Err(Rejection::UnsupportedAlg);
        }
        let kid = header["kid"].as_str().ok_or(Rejection::UnknownKid)?;
        let key = self.key(kid).ok_or(Rejection::UnknownKid)?;
        let sig = b64.decode(sig).map_err(|_| Rejection::BadSignature)?;
        // The signing input is the token's own `header.payload` text, not a re-encoding.
        let signing_input = &token[..h.len() + 1 + p.len()];
        ring::signature::RsaPublicKeyComponents {
            n: &key.n,
            e: &key.e,
        }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signing_input.as_bytes(),
            &sig,
        )
        .map_err(|_| Rejection::BadSignature)?;

        let claims = json(p)?;
        if claims["iss"].as_str() != Some(&self.issuer) {
            return Err(Rejection::IssuerMismatch);
        }
        if !audience_matches(&claims["aud"], audience) {
            return Err(Rejection::AudienceMismatch);
        }
        let exp = claims["exp"].as_u64().ok_or(Rejection::NoExpiry)?;
        if exp <= now {
            return Err(Rejection::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            match nbf.as_u64() {
                Some(nbf) if nbf <= now => {}
                Some(_) => return Err(Rejection::NotYetValid),
                None => return Err(Rejection::Malformed),
            }
        }
        if !is_service_account_name(claims["sub"].as_str().unwrap_or_default()) {
            return Err(Rejection::NotServiceAccount);
        }
        Ok(exp)
    }
}

/// `aud` is a string or a list of strings (RFC 7519 §4.1.3).
fn audience_matches(aud: &Value, audience: &str) -> bool {
    match aud {
        Value::String(a) => a == audience,
        Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// `system:serviceaccount:<namespace>:<name>`, both parts non-empty.
fn is_service_account_name(sub: &str) -> bool {
    sub.strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
}

/// The 400 `invalid_grant` for a refused subject, saying which check failed.
fn rejection_reply(reason: Rejection) -> AuthReply {
    let body = json!({"error": "invalid_grant", "error_description": reason.description()});
    AuthReply::raw(400, "application/json", Bytes::from(body.to_string()))
}

struct Fakes {
    client_id: String,
    audience: String,
    /// The profile tokens minted through the control port are locked to.
    profile_id: String,
    /// `Some`: subject tokens are verified against the cluster's keys (`--jwks-file`).
    jwks: Option<Jwks>,
    secrets: Mutex<Vec<String>>,
    issued_tokens: Mutex<Vec<String>>,
    stats: Stats,
}

impl Fakes {
    /// Decides one exchange; mirrors the checks Civic documents (docs/protocol.md §1).
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
        let sub_exp = match &self.jwks {
            // Without a JWKS the reply stays the plain `invalid_grant` other callers expect.
            None => self.subject_expiry(subject).ok_or(None),
            Some(jwks) => jwks
                .verify(subject, &self.audience, jwt::now_unix())
                .map_err(Some),
        };
        let sub_exp = match sub_exp {
            Ok(exp) => exp,
            Err(reason) => {
                self.stats.invalid_grant.fetch_add(1, Ordering::Relaxed);
                self.stats.subject_rejected.fetch_add(1, Ordering::Relaxed);
                let Some(reason) = reason else {
                    return AuthReply::error(400, "invalid_grant");
                };
                *self
                    .stats
                    .subject_rejected_by_reason
                    .lock()
                    .unwrap()
                    .entry(reason.description())
                    .or_default() += 1;
                eprintln!(
                    "civic-fakes: subject token rejected: {}",
                    reason.description()
                );
                return rejection_reply(reason);
            }
        };
        if self.jwks.is_some() {
            self.stats
                .subject_verified_with_jwks
                .fetch_add(1, Ordering::Relaxed);
        }
        let claims = jwt::decode_unverified(subject).unwrap_or_default();
        let sub = claims["sub"].as_str().unwrap_or("unknown");
        if let Some(iat) = claims["iat"].as_u64() {
            let mut by_subject = self.stats.subject_issued_at.lock().unwrap();
            let seen = by_subject.entry(sub.to_owned()).or_default();
            if seen.len() < MAX_ISSUED_AT_PER_SUBJECT {
                seen.insert(iat);
            }
        }
        let profile = req.field("civic_profile");
        if let Some(p) = profile {
            self.stats.profile_locked.fetch_add(1, Ordering::Relaxed);
            let mut by_profile = self.stats.issued_by_profile.lock().unwrap();
            // Bounded: a caller cannot grow the map with made-up profiles.
            if by_profile.len() < 64 || by_profile.contains_key(p) {
                *by_profile.entry(p.to_owned()).or_default() += 1;
            }
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
        let audience_ok = audience_matches(&claims["aud"], &self.audience);
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
            "subject_rejected": s.subject_rejected.load(Ordering::Relaxed),
            "subject_rejected_by_reason": *s.subject_rejected_by_reason.lock().unwrap(),
            "subject_verified_with_jwks": s.subject_verified_with_jwks.load(Ordering::Relaxed),
            "subject_issued_at": *s.subject_issued_at.lock().unwrap(),
            "hub_requests": requests.len(),
            "hub_authorized": requests.iter().filter(|r| r.authorized).count(),
            // Bounded by what a request can be: HTTP methods, and JSON-RPC method names.
            "hub_http_methods": count_by(requests.iter().map(|r| r.method.clone())),
            "hub_jsonrpc_methods": count_by(requests.iter().filter_map(|r| {
                r.json()?["method"].as_str().map(|m| m.chars().take(64).collect())
            })),
            "hub_with_profile_header": requests
                .iter()
                .filter(|r| r.header("x-civic-profile-id").is_some())
                .count(),
            "issued_by_profile": *s.issued_by_profile.lock().unwrap(),
            // Requests whose profile header names another profile than their token is locked to.
            "hub_profile_header_mismatch": requests
                .iter()
                .filter(|r| {
                    let locked = r
                        .bearer
                        .as_deref()
                        .and_then(jwt::decode_unverified)
                        .and_then(|c| c["civic_profile"].as_str().map(String::from));
                    locked.is_some() && r.header("x-civic-profile-id") != locked
                })
                .count(),
        })
    }
}

/// How often each value occurs.
fn count_by(values: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts
}

/// The hub accepts a token only when the fake Auth issued it locked to one of `profiles`.
fn profile_locked_validator(
    profiles: Vec<String>,
) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    move |token| {
        issued_by_fake_auth(token)
            && jwt::verify(token).is_ok_and(|c| {
                c.get("civic_profile")
                    .and_then(Value::as_str)
                    .is_some_and(|p| profiles.iter().any(|q| q == p))
            })
    }
}

const COUNTDOWN_MAX_STEPS: u64 = 50;
const COUNTDOWN_MAX_INTERVAL_MS: u64 = 2_000;

/// The `countdown` tool: one SSE response held open for `steps × intervalMs`, a
/// `notifications/progress` per step (when the call carries a progress token), then the result.
fn countdown(msg: &Value) -> HubReply {
    let args = &msg["params"]["arguments"];
    let steps = args["steps"]
        .as_u64()
        .unwrap_or(5)
        .clamp(1, COUNTDOWN_MAX_STEPS);
    let interval = args["intervalMs"]
        .as_u64()
        .unwrap_or(500)
        .min(COUNTDOWN_MAX_INTERVAL_MS);
    let token = &msg["params"]["_meta"]["progressToken"];
    let mut frames = Vec::new();
    for step in 1..=steps {
        frames.push(civic_testkit::SseStep::Wait(Duration::from_millis(
            interval,
        )));
        if !token.is_null() {
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": token, "progress": step, "total": steps}});
            frames.push(civic_testkit::SseStep::Event(sse_message(&progress)));
        }
    }
    let text = format!("counted {steps}");
    let result = json!({"jsonrpc": "2.0", "id": msg["id"],
        "result": {"content": [{"type": "text", "text": text}], "isError": false}});
    frames.push(civic_testkit::SseStep::Event(sse_message(&result)));
    HubReply::sse(frames)
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
        }, {
            "name": "countdown",
            "description": "Streams `steps` progress notifications `intervalMs` apart, then answers",
            "inputSchema": {"type": "object", "properties": {
                "steps": {"type": "integer", "minimum": 1, "maximum": COUNTDOWN_MAX_STEPS},
                "intervalMs": {"type": "integer", "minimum": 0, "maximum": COUNTDOWN_MAX_INTERVAL_MS},
            }},
        }]}),
        "tools/call" if msg["params"]["name"] == "countdown" => return countdown(&msg),
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
            let body = read_body(body).await;
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
        // A ready access token for a static-token binding (a Secret the test makes): what a
        // user would copy from the Civic app. The body is the token's subject.
        (Method::POST, "/mint") => {
            let body = read_body(body).await;
            let sub = String::from_utf8_lossy(&body).trim().to_owned();
            if sub.is_empty() || sub.chars().any(char::is_control) {
                return text(
                    StatusCode::BAD_REQUEST,
                    "subject required\n".into(),
                    "text/plain",
                );
            }
            let token =
                jwt::mint_access(&sub, Some(jwt::now_unix() + 3600), Some(&fakes.profile_id));
            eprintln!("civic-fakes: minted a static token for one subject");
            text(StatusCode::OK, token, "text/plain")
        }
        (Method::POST, "/revoke") => {
            // Read, though unused: a body left unread makes hyper close the connection, which
            // the apiserver's proxy may already be reusing.
            read_body(body).await;
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

/// The whole request body; an aborted upload reads as empty (and is refused as such).
async fn read_body(body: Incoming) -> Bytes {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
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
    let jwks = match (&args.jwks_file, &args.issuer) {
        (Some(path), Some(issuer)) => {
            let jwks = Jwks::load(path.clone(), issuer.clone())?;
            eprintln!(
                "civic-fakes: verifying subject tokens against {} JWKS key(s) from {}, issuer {issuer}",
                jwks.key_count(),
                path.display()
            );
            Some(jwks)
        }
        // clap enforces `--issuer` with `--jwks-file`; an issuer alone changes nothing.
        _ => None,
    };

    let fakes = Arc::new(Fakes {
        client_id: args.client_id.clone(),
        audience: args.audience.clone(),
        profile_id: args.profile_id.clone(),
        jwks,
        secrets: Mutex::new(secrets),
        issued_tokens: Mutex::new(Vec::new()),
        stats: Stats::default(),
    });
    let auth = FakeCivicAuth::start().await?;
    let decide = fakes.clone();
    auth.set_script(move |_, req| Some(decide.exchange(req)));
    let hub = Arc::new(FakeHub::start().await?);
    let accepted = std::iter::once(args.profile_id.clone())
        .chain(
            args.extra_profile_ids
                .iter()
                .filter(|p| !p.is_empty())
                .cloned(),
        )
        .collect();
    hub.set_validator(profile_locked_validator(accepted));
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

    fn fakes() -> Fakes {
        Fakes {
            client_id: "client".into(),
            profile_id: "prof-1".into(),
            audience: "civic".into(),
            jwks: None,
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
        assert!(profile_locked_validator(vec!["prof-1".into()])(&token));
        assert!(profile_locked_validator(vec![
            "prof-0".into(),
            "prof-1".into()
        ])(&token));
        assert!(!profile_locked_validator(vec!["prof-2".into()])(&token));
        assert_eq!(f.stats.issued_by_profile.lock().unwrap()["prof-1"], 1);
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
        assert!(!profile_locked_validator(vec!["prof-1".into()])(&unlocked));
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

    // --- JWKS mode (`--jwks-file`) ---

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    // Two fixed 2048-bit RSA test keys (PKCS#8): ring can sign but not generate RSA keys, and
    // the workspace has no RSA key generator. They sign nothing but these tests' tokens.
    const TEST_KEY_A: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDG9PdEUgiPPAVI
o6CEQsnxgRTaYk+PGsUY5Vkn5Nt47RDpZXtpUk8vKPcAqjKAtSX2pX15vp9Xq3aS
0oW2aXiLbKzy67RbB6474lVm7fLVqSnFsLcI87+e1Ijpu6gImaki3qGUVfLjAu+h
8h28xoyS0QuOesgosjl3CxcPW31zseJyWGFgEBP1mHXBkWyy9L5gN+0+Hr3e44+P
afGLTCPEGVU3xU1nr2BirXphLhHDdBuRLCDhROgFEmNBOjHFL/5W6x20wGmloF+R
xp8IjrgxsANzArrUaM4QYSdxdy01XQduNy0Pq29KXsZjhboLdk6goKxtabAJbcjb
MUh3RGLlAgMBAAECggEAA0j0qIwKiE48pRjPM+0utz4tyWGhqtJ4P3i79TNrZ0P8
yT8WdPmkWo+R19DiQWtG8PCwZsPzDr1t7q8rVi9yy380HNUE9ugkeZMmB1YgR2RX
ZE75EAdcRNkBWLXzPeRxnTnb+kkarU0KsVvAH3I6Ictx+3yDVQlaTGD3v2u/4XAz
7DPyKjYcRCTWQEwbMhn9BE6jUo2eYW0puA+ldVDc+NWwRJerqfrJKLSqEt8K88/J
aqGtAej3i7j0+wPivZZI07OU1BwSuOhBvBRdwFWYkV6zq+3BZlqZ5msrw+V7FHTl
ytDAaphD82ABWilIQCer3oicsz9qVzwFrPjBF6euAQKBgQDlt1u+WnkWuN12Ih2i
8rVS7FP3aJuDb41zwODzR+h9mvqUgLKz1CwF9Xnyu5sqxd/EIS/kUFOKs8Xuw3HR
wCQ3teuMlV0Hty9eihzHzMei1Ze77Xi4vDQH8ABFmQqolTVftOvTgeOSlo/UgByL
6GAinmXWZwex342kzoD17hwqAQKBgQDduKHmY/ComXck+In4HG5kdnnXyFFEKdmn
Cmb136JGW5eU8LvpScBRna7XMEf3uT/oOXOJ94a8egyMyXD6FGDd4FM19FWF74zo
HAFWNcz7TfRZRhLpIQ7XWk3fcaZ3WjsdO/mdkVNqC7ptSO5qa7w+7RR5b8+vqYYG
XDJJ4fLQ5QKBgAnsTMNBRz/LBo4G1T7nuxt05/+k/irEU9jvOQhpT8q1OiPWF2Ib
RTeQrg7lOcO0PoFLabU0Hxe7wk4ZFT6ZTTc23ZD6FsWxjRNJZgrfdrQ7A83zaSaZ
wqmhHXHkNYiowWB8AT/muXzokhf83L7Sb+yu6PlFBBkT7htzbDCzc3YBAoGBAI0V
fT/C/FHsRVorJG/Sd5RJp0JdXwjGsI6QGe/+e53VjmDhxlCt80h709NuD31cTYQR
eqmh7gRkjTPQwqj+6pyEr643aWwugDT6DQe0eFi4w/FCm6notS7ncYHrKYfszIzP
qwhOfwuNpvT/YWYqY8COz2ZudXNLpdLKO92zfvTZAoGAZ9+DB1qC1+YNXCSOoR8h
IVahDdmAqDfheLSdr4RolT6q/2gvR3NGrLCtvieK0LAuBLYUZyo0SUx2hOd727F7
qvOY0Cg40lVf0bYIaecg8fJGg/PI8awP+NVFSDejR+qAecWzKbclhz89jUcAL1LM
ulIhvkEDH3IxsT8WsmeWhuk=
-----END PRIVATE KEY-----
";
    const TEST_KEY_B: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQChrjJ7GPFUBe9m
ktfAvyCGhqJ5Ks+QgX/QJKXaJMD4pJdTFJH2FBRwo/Zaq1xsxCk/Zr4bcRCc6NP0
1Ry72c6Bw/Vp0XI4LyikdtnDtJGJ7TWF3WeGT215aE4jRq8+vXp7lbDXwjTivHMA
K670jEqZHS1o/S2K9BxOuopKCD1eXA3vXkXM0BbZAEIRw+0oW4LgnXFAPZ4LudUj
3bZ40uWmAPn30BLtns0DvwCo4B5kBnXqmw8GPif38o5yRnmm4KQVHmMmeOOiVnCU
BmWFjmvOx47qsdfOuvS9KB7uIkzFeuQN5wIa/CrWS/RB4aUr6csDZLiwDZc5b3zR
mqIINNNtAgMBAAECggEACWDa4cQRH5AWkmsbI72Sa+s8Wm3uy1GPsemmSzCNlv6p
HnMXgmAozV3daOX+vvpj8B8MEPhuf8OLo+yGtajNLz7IKgKxruuhXmTcfdsoBAmj
7KdqnWJXFc9ElQxBFxETnT6SGvnTaoGG5DAkfl/y5c3I+AmTjjdZuwFcCy5OLP5v
O+/5t2Yij/WDkDHDc1zke1x+lBVCvVxG5ba/6KnmPnGCCqqVlHaDY5ohV1cgD3jS
aYBy/blYGHJtJ+Kd+Ai/uhGQnejBMXyieqTolNw5bLyVGRA6xaMMBc0HN+Smp2Fs
D4AvOYtfgjfEzREXuhPDTTzQVhDmnus/xJoQUDKdawKBgQDjB0YqtTx4GmTpvXAp
NlFc5kxF2C53byHDGlgdsHsbtzKz4JXIFCecbvEHuEdEq2R4S0JJfrHEh4kPfBZH
zgh0CwfLNzuxMVJ+K2o3DNnNiS7qKamFVcowzTTn1NfiDEwqZfizhMYKETiH0gBL
E0uMf5vzAICaXrqF5vrcLoOG0wKBgQC2UBbqv8XcFi4DmW59h/QA2viV3mO+fjjD
r4J1B6g8HxtHupcsgkBqyl+rmYa+AOYDhtf7FpfzIIJwbbOfRHErtUkFIY1TsSuL
1Acji0Vzi8y1v37Jm+/P1Vi7VGz1yDpyWJ6PHlYcn0dGiN8K5AZc4su68+ufxDCX
b5F36xJUvwKBgGZg92F3DWfT70IA7b2IAzTznd25WWr+sKj9DlOFLF8ZREIduy3Y
+Ovwk705etoauFoPBjuCaMQJouNav+ltnh5GgyM/KyoC5gKDrYhZwTaQ8JkkZI/+
Wgmb4InTT+9eQFK2XWsHKw+LKIUHTJ6OevlG6pqw1U3H/jE4MlRsnV+FAoGAQqTy
S6wA0xxUg8JRrpfFLY7eMkLSaW9QptAAu3EqIZgpa8Ycvwt6Ks+Bu4PqyogfjQh8
6W9v6lNm+1xOvhjR2e1yHOsP85kfVwUR+v9NSxi+o222FlLnjizqO8h38DzaiLQ2
ehDX36yl7HXaOuvyG4BYgyXpa0TXknQZVCHdWJcCgYAHz3UrCv57gbBk6DdQ2hju
tUPHNXEOQmizVZhVJiVMeWYj5EVKav7yd5BVHAUm/zwVAHfCYWGzIOu49MlQ3S43
pZXZv1wGg1CXS9nqVbYowVWWZQa/Md4GVVd6ouKdA3UTCU9+n1aiYwKFp9D3twpY
m+td74KGx3e6eNmO3ZhG1w==
-----END PRIVATE KEY-----
";

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn key_pair(pem: &str) -> ring::signature::RsaKeyPair {
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject as _;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).expect("test key PEM");
        ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("test RSA key")
    }

    /// A JWKS shaped like the apiserver's `/openid/v1/jwks`.
    fn jwks_doc(keys: &[(&str, &str)]) -> String {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(pem, kid)| {
                let public = ring::signature::RsaPublicKeyComponents::<Vec<u8>>::from(
                    key_pair(pem).public(),
                );
                json!({"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
                       "n": b64(&public.n), "e": b64(&public.e)})
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn sign(pem: &str, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let kp = key_pair(pem);
        let mut sig = vec![0; kp.public().modulus_len()];
        kp.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .expect("RS256 signing");
        format!("{input}.{}", b64(sig))
    }

    /// Claims of a projected token as the apiserver issues them.
    fn projected_claims() -> Value {
        let now = jwt::now_unix();
        json!({
            "aud": ["civic"],
            "exp": now + 600,
            "iat": now - 5,
            "nbf": now - 5,
            "iss": ISSUER,
            "sub": "system:serviceaccount:team:app",
            "kubernetes.io": {"namespace": "team", "serviceaccount": {"name": "app"}},
        })
    }

    fn projected(pem: &str, kid: &str, claims: &Value) -> String {
        sign(pem, &json!({"alg": "RS256", "kid": kid}), claims)
    }

    /// A JWKS file in a temp dir; the dir must outlive the verifier.
    fn jwks_in(dir: &tempfile::TempDir, keys: &[(&str, &str)]) -> Jwks {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks_doc(keys)).unwrap();
        Jwks::load(path, ISSUER.into()).expect("JWKS loads")
    }

    fn fakes_with(jwks: Jwks) -> Fakes {
        Fakes {
            jwks: Some(jwks),
            ..fakes()
        }
    }

    #[test]
    fn jwks_accepts_a_verified_service_account_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = fakes_with(jwks_in(
            &dir,
            &[(TEST_KEY_A, "key-a"), (TEST_KEY_B, "key-b")],
        ));
        let claims = projected_claims();
        let subject = projected(TEST_KEY_B, "key-b", &claims);
        let _ = f.exchange(&request("s1", &subject, Some("prof-1")));
        let token = issued_token(&f).expect("a token was issued");
        let issued = jwt::verify(&token).expect("signed by the fake");
        assert_eq!(issued["sub"], "system:serviceaccount:team:app");
        assert!(issued["exp"].as_u64().unwrap() <= claims["exp"].as_u64().unwrap());
        assert_eq!(
            f.stats.subject_verified_with_jwks.load(Ordering::Relaxed),
            1
        );
        assert_eq!(f.stats.subject_rejected.load(Ordering::Relaxed), 0);
        // A plain string `aud` and a token without `nbf` are fine too.
        let mut claims = projected_claims();
        claims["aud"] = json!("civic");
        claims.as_object_mut().unwrap().remove("nbf");
        let _ = f.exchange(&request(
            "s1",
            &projected(TEST_KEY_A, "key-a", &claims),
            None,
        ));
        assert_eq!(
            f.stats.subject_verified_with_jwks.load(Ordering::Relaxed),
            2
        );
        assert_eq!(f.stats.issued.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn jwks_rejects_each_failed_check_with_its_description() {
        let dir = tempfile::tempdir().unwrap();
        let f = fakes_with(jwks_in(&dir, &[(TEST_KEY_A, "key-a")]));
        let now = jwt::now_unix();
        let with = |field: &str, value: Value| {
            let mut c = projected_claims();
            c[field] = value;
            projected(TEST_KEY_A, "key-a", &c)
        };
        // Same signature, payload swapped for another service account's.
        let tampered = {
            let good = projected(TEST_KEY_A, "key-a", &projected_claims());
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            let mut c = projected_claims();
            c["sub"] = json!("system:serviceaccount:kube-system:admin");
            parts[1] = b64(c.to_string());
            parts.join(".")
        };
        let cases = [
            (
                projected(TEST_KEY_A, "key-x", &projected_claims()),
                "unknown kid",
            ),
            (
                sign(TEST_KEY_A, &json!({"alg": "RS256"}), &projected_claims()),
                "unknown kid",
            ),
            // Signed by a key the cluster does not publish, under a published kid.
            (
                projected(TEST_KEY_B, "key-a", &projected_claims()),
                "bad signature",
            ),
            (tampered, "bad signature"),
            (
                with("iss", json!("https://evil.example")),
                "issuer mismatch",
            ),
            (with("aud", json!(["other"])), "audience mismatch"),
            (with("exp", json!(now - 1)), "expired"),
            (with("nbf", json!(now + 600)), "not yet valid"),
            (with("sub", json!("alice")), "not a service account"),
            (
                with("sub", json!("system:serviceaccount:team")),
                "not a service account",
            ),
            // The HS256 tokens the legacy mode accepts are refused outright.
            (
                jwt::mint_subject_at("system:serviceaccount:team:app", now + 600),
                "unsupported alg",
            ),
            ("not-a-jwt".to_owned(), "malformed token"),
        ];
        for (token, want) in &cases {
            let got = f.jwks.as_ref().unwrap().verify(token, "civic", now);
            assert_eq!(
                got.map_err(Rejection::description),
                Err(*want),
                "case {want}"
            );
            let _ = f.exchange(&request("s1", token, None));
        }
        assert!(issued_token(&f).is_none());
        assert_eq!(
            f.stats.subject_rejected.load(Ordering::Relaxed),
            cases.len()
        );
        assert_eq!(f.stats.invalid_grant.load(Ordering::Relaxed), cases.len());
        assert_eq!(
            f.stats.subject_verified_with_jwks.load(Ordering::Relaxed),
            0
        );
        let by_reason = f.stats.subject_rejected_by_reason.lock().unwrap().clone();
        assert_eq!(by_reason["unknown kid"], 2);
        assert_eq!(by_reason["bad signature"], 2);
        assert_eq!(by_reason["not a service account"], 2);
        assert_eq!(by_reason["expired"], 1);
    }

    #[test]
    fn jwks_reload_picks_up_a_rotated_key() {
        let dir = tempfile::tempdir().unwrap();
        // Laid out like a ConfigMap mount: jwks.json -> ..data/jwks.json, ..data -> a version dir.
        let write_version = |name: &str, doc: &str| {
            let version = dir.path().join(name);
            std::fs::create_dir(&version).unwrap();
            std::fs::write(version.join("jwks.json"), doc).unwrap();
            let tmp = dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(name, &tmp).unwrap();
            std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
        };
        write_version("..v1", &jwks_doc(&[(TEST_KEY_A, "key-a")]));
        let path = dir.path().join("jwks.json");
        std::os::unix::fs::symlink("..data/jwks.json", &path).unwrap();
        let jwks = Jwks::load(path.clone(), ISSUER.into()).unwrap();
        let now = jwt::now_unix();
        let by_a = projected(TEST_KEY_A, "key-a", &projected_claims());
        let by_b = projected(TEST_KEY_B, "key-b", &projected_claims());
        assert!(jwks.verify(&by_a, "civic", now).is_ok());
        assert_eq!(jwks.verify(&by_b, "civic", now), Err(Rejection::UnknownKid));

        // Rotation by symlink swap: only key-b is published now.
        write_version("..v2", &jwks_doc(&[(TEST_KEY_B, "key-b")]));
        assert!(jwks.verify(&by_b, "civic", now).is_ok());
        assert_eq!(jwks.verify(&by_a, "civic", now), Err(Rejection::UnknownKid));

        // An in-place rewrite (same inode, same size: key-a's material under kid key-b) is
        // noticed through the mtime alone.
        let target = dir.path().join("..v2/jwks.json");
        let rewritten = jwks_doc(&[(TEST_KEY_A, "key-b")]);
        assert_eq!(
            rewritten.len() as u64,
            std::fs::metadata(&target).unwrap().len()
        );
        std::fs::write(&target, rewritten).unwrap();
        let later = SystemTime::now() + Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let a_as_b = projected(TEST_KEY_A, "key-b", &projected_claims());
        assert!(jwks.verify(&a_as_b, "civic", now).is_ok());
        assert_eq!(
            jwks.verify(&by_b, "civic", now),
            Err(Rejection::BadSignature)
        );

        // A broken rewrite keeps the last good keys.
        std::fs::write(&target, "{").unwrap();
        assert!(jwks.verify(&a_as_b, "civic", now).is_ok());
    }

    #[test]
    fn parse_jwks_keeps_only_rs256_signing_keys() {
        let mut doc: Value = serde_json::from_str(&jwks_doc(&[(TEST_KEY_A, "key-a")])).unwrap();
        let keys = doc["keys"].as_array_mut().unwrap();
        keys.push(json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"}));
        let mut enc = keys[0].clone();
        enc["kid"] = json!("enc");
        enc["use"] = json!("enc");
        keys.push(enc);
        let parsed = parse_jwks(&doc.to_string()).unwrap();
        assert_eq!(parsed.keys().collect::<Vec<_>>(), vec!["key-a"]);
        assert_eq!(parsed["key-a"].e, vec![1, 0, 1]);
        assert_eq!(parsed["key-a"].n.len(), 256);
        assert!(parse_jwks(r#"{"keys": []}"#).is_err());
        assert!(parse_jwks("not json").is_err());
    }

    #[test]
    fn jwks_file_requires_issuer() {
        let base = [
            "civic-fakes",
            "--tls-cert=c.pem",
            "--tls-key=k.pem",
            "--client-id=client",
            "--client-secret-file=s",
            "--profile-id=p",
        ];
        let with = |extra: &[&str]| Args::try_parse_from(base.iter().chain(extra));
        let legacy = with(&[]).expect("JWKS mode is optional");
        assert!(legacy.jwks_file.is_none());
        let err = with(&["--jwks-file=jwks.json"]).expect_err("--issuer is required");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let args = with(&["--jwks-file=jwks.json", &format!("--issuer={ISSUER}")]).unwrap();
        assert_eq!(args.issuer.as_deref(), Some(ISSUER));
    }

    #[tokio::test]
    async fn jwks_rejection_is_described_over_http_and_counted_in_stats() {
        let dir = tempfile::tempdir().unwrap();
        let fakes = Arc::new(fakes_with(jwks_in(&dir, &[(TEST_KEY_A, "key-a")])));
        let auth = FakeCivicAuth::start().await.unwrap();
        let decide = fakes.clone();
        auth.set_script(move |_, req| Some(decide.exchange(req)));
        let hub = FakeHub::start().await.unwrap();

        let post = |subject: String| {
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", GRANT_TYPE_TOKEN_EXCHANGE)
                .append_pair("subject_token", &subject)
                .append_pair("subject_token_type", civic_testkit::auth::TOKEN_TYPE_ACCESS)
                .finish();
            let basic = base64::engine::general_purpose::STANDARD.encode("client:s1");
            let req = Request::post("/oauth/token")
                .header("host", auth.addr().to_string())
                .header("authorization", format!("Basic {basic}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form)))
                .unwrap();
            civic_testkit::client::send(auth.addr(), req)
        };
        let forged = projected(TEST_KEY_B, "key-a", &projected_claims());
        let resp = post(forged.clone()).await.unwrap();
        assert_eq!(resp.status, 400);
        let body = resp.json().unwrap();
        assert_eq!(body["error"], "invalid_grant");
        assert_eq!(body["error_description"], "bad signature");
        for part in forged.split('.') {
            assert!(!resp.text().contains(part), "the token is never echoed");
        }
        let good = projected(TEST_KEY_A, "key-a", &projected_claims());
        assert_eq!(post(good).await.unwrap().status, 200);

        let stats = fakes.stats_json(&hub);
        assert_eq!(stats["subject_rejected"], 1);
        assert_eq!(stats["subject_rejected_by_reason"]["bad signature"], 1);
        assert_eq!(stats["subject_verified_with_jwks"], 1);
        assert_eq!(stats["invalid_grant"], 1);
        assert_eq!(stats["issued"], 1);
        for key in [
            "exchanges",
            "invalid_client",
            "invalid_request",
            "profile_locked_exchanges",
            "issued_by_secret",
            "hub_requests",
            "hub_authorized",
            "hub_http_methods",
            "hub_jsonrpc_methods",
            "hub_with_profile_header",
            "issued_by_profile",
            "hub_profile_header_mismatch",
        ] {
            assert!(stats.get(key).is_some(), "{key} is still reported");
        }
    }

    #[tokio::test]
    async fn countdown_holds_one_sse_stream_open_with_a_progress_event_per_step() {
        let hub = FakeHub::start().await.unwrap();
        hub.set_responder(hub_reply);
        let token = jwt::mint_access("agent", Some(jwt::now_unix() + 60), None);
        let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "countdown", "arguments": {"steps": 3, "intervalMs": 100},
            "_meta": {"progressToken": "p1"}}});
        let req = Request::post("/hub/mcp")
            .header("host", hub.addr().to_string())
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from(call.to_string())))
            .unwrap();
        let started = std::time::Instant::now();
        let resp = civic_testkit::client::send(hub.addr(), req).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "one wait per step: {} {}",
            resp.status,
            resp.text()
        );
        assert_eq!(resp.status, 200);
        let frames: Vec<Value> = resp
            .text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(frames.len(), 4, "three progress events, then the result");
        for (i, f) in frames[..3].iter().enumerate() {
            assert_eq!(f["method"], "notifications/progress");
            assert_eq!(f["params"]["progressToken"], "p1");
            assert_eq!(f["params"]["progress"], i + 1);
        }
        assert_eq!(frames[3]["id"], 7);
        assert_eq!(frames[3]["result"]["content"][0]["text"], "counted 3");
    }

    #[test]
    fn accepted_subjects_record_their_distinct_issue_times() {
        let dir = tempfile::tempdir().unwrap();
        let fakes = fakes_with(jwks_in(&dir, &[(TEST_KEY_A, "key-a")]));
        let mut claims = projected_claims();
        for iat in [100, 100, 200] {
            claims["iat"] = json!(jwt::now_unix() - iat);
            let _ = fakes.exchange(&request(
                "s1",
                &projected(TEST_KEY_A, "key-a", &claims),
                None,
            ));
        }
        let _ = fakes.exchange(&request(
            "s1",
            &projected(TEST_KEY_B, "key-a", &claims),
            None,
        ));
        assert_eq!(fakes.stats.issued.load(Ordering::Relaxed), 3);
        assert_eq!(fakes.stats.subject_rejected.load(Ordering::Relaxed), 1);
        let seen = fakes.stats.subject_issued_at.lock().unwrap();
        assert_eq!(seen.len(), 1, "only the accepted subject");
        assert_eq!(
            seen["system:serviceaccount:team:app"].len(),
            2,
            "a rotation is one new value"
        );
    }
}
