// docs/protocol.md statements 7-20: credentials, the exchange request, caching rules, failures,
// the 401 replay and secret hygiene. Real binary, fake Civic Auth, fake hub.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use civic_sidecar::contract as c;
use civic_testkit::auth::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID};
use civic_testkit::client::{self, jsonrpc};
use civic_testkit::hub::{HubReply, issued_by_fake_auth};
use civic_testkit::secrets::{CLIENT_ID, CLIENT_SECRET, CLIENT_SECRET_WRONG, PROFILE_ID};
use civic_testkit::{AuthReply, Readiness, jwt};
use common::{Setup, Subject, assert_no_secret_in, assert_sidecar_error};
use http::{Method, header};
use http_body_util::Full;
use serde_json::json;

fn body(id: u64) -> Full<Bytes> {
    Full::new(Bytes::from(jsonrpc(id, "tools/list").to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_workload_authorization_replaced() {
    let env = Setup::new("s07_workload_authorization_replaced")
        .start()
        .await
        .unwrap();
    let req = env
        .request(Method::POST)
        .header(header::AUTHORIZATION, "Bearer workload-own-token")
        .header(header::AUTHORIZATION, "Basic d29ya2xvYWQ6cGFzcw==")
        .body(body(1))
        .unwrap();
    assert_eq!(env.send(req).await.unwrap().status, 200);
    let seen = env.hub.last_request().unwrap();
    let auths = seen.header_values("authorization");
    assert_eq!(auths.len(), 1, "exactly one Authorization upstream");
    let issued = env.auth.issued_tokens();
    assert_secret_eq!(
        auths[0],
        format!("Bearer {}", issued[0]),
        "the exchanged token, nothing else"
    );
    assert!(seen.authorized);
    // Without any workload Authorization the same token is injected.
    assert_eq!(env.call(2).await.unwrap().status, 200);
    assert_secret_eq!(
        env.hub
            .last_request()
            .unwrap()
            .header_values("authorization"),
        vec![format!("Bearer {}", issued[0])]
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_static_token_mode_injects_file_token_without_exchange() {
    let env = Setup::new("s07_static_token_mode_injects_file_token_without_exchange")
        .subject(Subject::Static)
        .start()
        .await
        .unwrap();
    let req = env
        .request(Method::POST)
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(body(1))
        .unwrap();
    assert_eq!(env.send(req).await.unwrap().status, 200);
    let seen = env.hub.last_request().unwrap();
    assert_secret_eq!(
        seen.header_values("authorization"),
        vec![format!("Bearer {}", env.static_token)]
    );
    assert_eq!(
        env.auth.calls(),
        0,
        "static mode never calls the token endpoint"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_exchange_request_shape() {
    let env = Setup::new("s08_exchange_request_shape")
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let reqs = env.auth.requests();
    assert!(!reqs.is_empty());
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/oauth/token");
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/x-www-form-urlencoded"),
        "form body"
    );
    assert_secret_eq!(
        r.basic,
        Some((CLIENT_ID.to_string(), CLIENT_SECRET.to_string())),
        "HTTP Basic client auth"
    );
    assert_eq!(r.field("grant_type"), Some(GRANT_TYPE_TOKEN_EXCHANGE));
    assert_secret_eq!(r.field("subject_token"), Some(env.subject_token.as_str()));
    assert_eq!(r.field("subject_token_type"), Some(TOKEN_TYPE_ACCESS));
    for f in ["grant_type", "subject_token", "subject_token_type"] {
        assert_eq!(r.field_count(f), 1, "{f} exactly once");
    }
    assert_eq!(
        r.field("client_id"),
        None,
        "client_id not in the body with Basic"
    );
    assert_eq!(
        r.field("client_secret"),
        None,
        "client_secret never in the body"
    );
    assert_eq!(r.outcome, "issued");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_subject_token_type_configurable_and_https_with_ca_file() {
    let env = Setup::new("s08_subject_token_type_configurable_and_https_with_ca_file")
        .tls()
        .env(c::ENV_SUBJECT_TOKEN_TYPE, TOKEN_TYPE_ID)
        .start()
        .await
        .unwrap();
    assert!(env.auth.token_url().starts_with("https://"));
    assert_eq!(env.call(1).await.unwrap().status, 200);
    assert_eq!(
        env.auth.requests()[0].field("subject_token_type"),
        Some(TOKEN_TYPE_ID)
    );
    assert!(
        env.hub.last_request().unwrap().authorized,
        "HTTPS hub reached with the exchanged token"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_optional_fields_exactly_when_configured() {
    // Everything configured.
    let env = Setup::new("s09_optional_fields_all")
        .env(c::ENV_TOKEN_TTL_SECONDS, "900")
        .env(c::ENV_SCOPE, "openid profile")
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let r = &env.auth.requests()[0];
    assert_eq!(r.field("civic_profile"), Some(PROFILE_ID));
    assert_eq!(r.field("expires_in"), Some("900"));
    assert_eq!(r.field("scope"), Some("openid profile"));
    for f in ["civic_profile", "expires_in", "scope"] {
        assert_eq!(r.field_count(f), 1);
    }
    assert!(
        r.unexpected_fields().is_empty(),
        "never civic_account, resource, audience …: {:?}",
        r.unexpected_fields()
    );
    env.finish();

    // Profile without lock: no civic_profile; nothing else configured: no optional fields.
    let env = Setup::new("s09_optional_fields_unlocked")
        .lock(false)
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let r = &env.auth.requests()[0];
    for f in ["civic_profile", "expires_in", "scope"] {
        assert_eq!(r.field(f), None, "{f} only when configured");
    }
    assert!(
        r.unexpected_fields().is_empty(),
        "{:?}",
        r.unexpected_fields()
    );
    env.finish();

    let env = Setup::new("s09_optional_fields_no_profile")
        .no_profile()
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    assert!(
        !env.hub
            .last_request()
            .unwrap()
            .has_header("x-civic-profile-id")
    );
    // Nothing bound: the profile the app itself chooses reaches the hub (and with a profile
    // bound it is replaced: s07 and profiles.rs).
    let chosen = "11111111-2222-4333-8444-555555555555";
    let req = env
        .request(Method::POST)
        .header("x-civic-profile-id", chosen)
        .body(body(2))
        .unwrap();
    assert_eq!(env.send(req).await.unwrap().status, 200);
    assert_eq!(
        env.hub
            .last_request()
            .unwrap()
            .header_values("x-civic-profile-id"),
        [chosen]
    );
    let r = &env.auth.requests()[0];
    assert_eq!(r.field("civic_profile"), None);
    assert!(
        r.unexpected_fields().is_empty(),
        "{:?}",
        r.unexpected_fields()
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_profile_header_replaced_never_duplicated() {
    let env = Setup::new("s10_profile_header_replaced_never_duplicated")
        .start()
        .await
        .unwrap();
    let req = env
        .request(Method::POST)
        .header("x-civic-profile-id", "00000000-0000-0000-0000-000000000000")
        .header("X-Civic-Profile-Id", "11111111-1111-1111-1111-111111111111")
        .body(body(1))
        .unwrap();
    assert_eq!(env.send(req).await.unwrap().status, 200);
    assert_eq!(
        env.hub
            .last_request()
            .unwrap()
            .header_values("x-civic-profile-id"),
        vec![PROFILE_ID]
    );
    for m in [Method::GET, Method::DELETE] {
        env.send(env.request(m).body(body(2)).unwrap())
            .await
            .unwrap();
        assert_eq!(
            env.hub
                .last_request()
                .unwrap()
                .header_values("x-civic-profile-id"),
            vec![PROFILE_ID]
        );
    }
    env.finish();

    let env = Setup::new("s10_profile_header_custom_name")
        .env(c::ENV_PROFILE_HEADER, "x-civic-profile")
        .start()
        .await
        .unwrap();
    let req = env
        .request(Method::POST)
        .header("x-civic-profile", "default")
        .body(body(1))
        .unwrap();
    assert_eq!(env.send(req).await.unwrap().status, 200);
    let seen = env.hub.last_request().unwrap();
    assert_eq!(seen.header_values("x-civic-profile"), vec![PROFILE_ID]);
    env.finish();
}

/// Sends a request every `every` for `dur`, returns statuses.
async fn drive(env: &common::Env, dur: Duration, every: Duration) -> Vec<u16> {
    let end = Instant::now() + dur;
    let mut out = Vec::new();
    let mut id = 1000;
    while Instant::now() < end {
        id += 1;
        out.push(env.call(id).await.map(|r| r.status).unwrap_or(0));
        tokio::time::sleep(every).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_token_reused_until_refresh_point() {
    // expires_in 6 s: reused until X = 6 - min(30, 3) = 3 s after receipt, then replaced. The
    // replacement may be fetched in the background somewhat ahead of X (statement 11: no request
    // waits), so the checks are: reuse (no exchange) for the first half of X, a new exchange by
    // X, the first token not sent past X (plus scheduling slack), and requests on the new token.
    let env = Setup::new("s11_token_reused_until_refresh_point")
        .start_with(|auth, _| auth.set_default(AuthReply::ok_expires_in(6)))
        .await
        .unwrap();
    let t0 = env.auth.requests()[0].at;
    let first = env.auth.issued_tokens()[0].clone();
    let statuses = drive(
        &env,
        Duration::from_millis(5000).saturating_sub(t0.elapsed()),
        Duration::from_millis(100),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let exchanges: Vec<Duration> = env
        .auth
        .requests()
        .iter()
        .map(|r| r.at.duration_since(t0))
        .collect();
    assert!(
        exchanges
            .iter()
            .skip(1)
            .all(|at| *at >= Duration::from_millis(1500)),
        "reused, not re-exchanged, early in its reuse window: exchanges at {exchanges:?}"
    );
    assert!(
        exchanges.len() >= 2,
        "a new exchange once the refresh point is reached: {exchanges:?}"
    );
    assert!(
        exchanges.len() <= 3,
        "one refresh per window, not per request: {exchanges:?}"
    );
    let late_uses: Vec<Duration> = env
        .hub
        .requests()
        .iter()
        .filter(|r| r.bearer.as_deref() == Some(first.as_str()))
        .map(|r| r.at.duration_since(t0))
        .filter(|at| *at > Duration::from_millis(3350))
        .collect();
    assert!(
        late_uses.is_empty(),
        "the first token was still sent well after its 3 s reuse window: {late_uses:?}"
    );
    let latest = env.auth.issued_tokens().last().cloned();
    assert_secret_eq!(
        env.hub.last_request().unwrap().bearer,
        latest,
        "requests moved to the newest token"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_expiry_from_jwt_exp_without_expires_in() {
    // No expires_in; the JWT says exp = now + 4 s.
    let env = Setup::new("s12_expiry_from_jwt_exp_without_expires_in")
        .start_with(|auth, _| auth.set_default(AuthReply::ok_without_expires_in(Some(4))))
        .await
        .unwrap();
    let statuses = drive(
        &env,
        Duration::from_millis(1200),
        Duration::from_millis(100),
    )
    .await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(
        env.auth.calls(),
        1,
        "cached from the JWT exp, not re-exchanged per request"
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(env.call(1).await.unwrap().status, 200);
    assert!(
        env.auth.calls() >= 2,
        "re-exchanged once the JWT exp is near"
    );
    let last = env.hub.last_request().unwrap();
    assert!(last.authorized, "never sends an expired token");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_opaque_token_without_expiry_uses_default_not_per_request() {
    let env = Setup::new("s12_opaque_token_without_expiry_uses_default_not_per_request")
        .start_with(|auth, _| auth.set_default(AuthReply::ok_opaque_without_expiry()))
        .await
        .unwrap();
    let statuses = drive(&env, Duration::from_millis(2000), Duration::from_millis(50)).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        env.auth.calls(),
        1,
        "a short default lifetime, never an exchange per request"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_subject_rotation_invalidates_cache() {
    let env = Setup::new("s13_subject_rotation_invalidates_cache")
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let first = env.auth.issued_tokens()[0].clone();
    let rotated = jwt::mint_subject(
        "system:serviceaccount:team-a:agent",
        Duration::from_secs(3600),
    );
    env.rotate_subject(&rotated);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(env.call(2).await.unwrap().status, 200);
    let reqs = env.auth.requests();
    assert!(
        reqs.len() >= 2,
        "the rotated subject causes a new exchange before the next upstream request"
    );
    assert_secret_eq!(
        reqs.last().unwrap().field("subject_token"),
        Some(rotated.as_str())
    );
    let seen = env.hub.last_request().unwrap();
    assert_secret_ne!(
        seen.bearer.as_deref(),
        Some(first.as_str()),
        "the old subject's token is not used any more"
    );
    assert_secret_eq!(
        seen.bearer.as_deref(),
        env.auth.issued_tokens().last().map(String::as_str)
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_per_user_header_subjects_are_separate() {
    let env = Setup::new("s13_per_user_header_subjects_are_separate")
        .subject(Subject::Header("x-user-token".into()))
        .start()
        .await
        .unwrap();
    let alice = jwt::mint_subject("alice", Duration::from_secs(600));
    let bob = jwt::mint_subject("bob", Duration::from_secs(600));
    let mut bearers = Vec::new();
    for (i, subj) in [&alice, &bob, &alice, &bob].into_iter().enumerate() {
        let req = env
            .request(Method::POST)
            .header("x-user-token", subj.as_str())
            .body(body(i as u64))
            .unwrap();
        assert_eq!(env.send(req).await.unwrap().status, 200);
        let seen = env.hub.last_request().unwrap();
        assert!(
            !seen.has_header("x-user-token"),
            "the subject header is not forwarded"
        );
        bearers.push(seen.bearer.unwrap());
    }
    assert_eq!(env.auth.calls(), 2, "one exchange per user, then cached");
    assert_secret_eq!(bearers[0], bearers[2]);
    assert_secret_eq!(bearers[1], bearers[3]);
    assert_secret_ne!(bearers[0], bearers[1], "users never share a token");
    let subjects: Vec<String> = env
        .auth
        .requests()
        .iter()
        .filter_map(|r| r.field("subject_token").map(String::from))
        .collect();
    assert_secret_eq!(subjects, vec![alice, bob]);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_concurrent_first_requests_single_flight() {
    let env = Setup::new("s14_concurrent_first_requests_single_flight")
        .subject(Subject::Header("authorization".into()))
        .start_with(|auth, _| auth.set_default(AuthReply::ok().delay(Duration::from_millis(400))))
        .await
        .unwrap();
    let subject = jwt::mint_subject("carol", Duration::from_secs(600));
    let addr = env.addr();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            let req = client::mcp_request(addr, Method::POST)
                .header(header::AUTHORIZATION, format!("Bearer {subject}"))
                .body(body(i))
                .unwrap();
            client::send(addr, req).await.map(|r| r.status).unwrap_or(0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        env.auth.calls(),
        1,
        "64 concurrent first requests, one exchange"
    );
    let tokens: std::collections::BTreeSet<_> = env
        .hub
        .requests()
        .into_iter()
        .filter_map(|r| r.bearer)
        .collect();
    assert_eq!(tokens.len(), 1, "all used its result");
    env.finish();
}

async fn failing_env(name: &str, reply: AuthReply) -> common::Env {
    Setup::new(name)
        .readiness(Readiness::Live)
        .start_with(move |auth, _| auth.set_default(reply))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_invalid_grant_is_502_and_not_cached() {
    let env = failing_env(
        "s15_invalid_grant_is_502_and_not_cached",
        AuthReply::error(400, "invalid_grant"),
    )
    .await;
    let r = env.call(1).await.unwrap();
    // The issuer and audience Civic Auth must trust, read from the subject token (the message
    // is compared in lower case).
    let trust = format!(
        "civic auth does not trust this issuer: \"{}\" for audience \"civic\"",
        civic_testkit::secrets::SUBJECT_ISSUER.to_ascii_lowercase()
    );
    assert_sidecar_error(&r, 502, &["invalid_grant", &trust]);
    assert_eq!(env.hub.request_count(), 0);
    env.auth.set_default(AuthReply::ok());
    let mut ok = false;
    for i in 0..50 {
        if env.call(10 + i).await.unwrap().status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        ok,
        "the failure is not cached: a later request succeeds once Civic Auth does"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_invalid_client_is_502() {
    let env = Setup::new("s15_invalid_client_is_502")
        .readiness(Readiness::Live)
        .start()
        .await
        .unwrap();
    std::fs::write(&env.secret_file, CLIENT_SECRET_WRONG).unwrap();
    // Force an exchange with the wrong secret: a new subject.
    env.rotate_subject(&jwt::mint_subject("dave", Duration::from_secs(600)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = env.call(1).await.unwrap();
    assert_sidecar_error(&r, 502, &["invalid_client"]);
    assert_eq!(
        env.auth.requests().last().unwrap().outcome,
        "invalid_client"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_throttled_or_5xx_is_503_with_retry_after() {
    for (name, reply) in [
        ("s15_throttled_429", AuthReply::too_many_requests(7)),
        ("s15_server_error_500", AuthReply::status(500)),
        ("s15_bad_gateway_502", AuthReply::status(502)),
    ] {
        let env = failing_env(name, reply).await;
        let r = env.call(1).await.unwrap();
        assert_sidecar_error(&r, 503, &["exchange", "civic auth", "token"]);
        let ra = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("{name}: 503 needs Retry-After"));
        assert!(
            ra.trim().parse::<u64>().is_ok(),
            "{name}: Retry-After in seconds, got {ra}"
        );
        assert_eq!(env.hub.request_count(), 0);
        env.finish();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_missing_or_malformed_token_response_is_error() {
    for (name, reply) in [
        (
            "s15_missing_access_token",
            AuthReply::missing_access_token(),
        ),
        ("s15_malformed_json", AuthReply::malformed_json()),
        ("s15_huge_body", AuthReply::huge_body(8 * 1024 * 1024)),
    ] {
        let env = failing_env(name, reply).await;
        let r = env.call(1).await.unwrap();
        assert!(
            r.status == 502 || r.status == 503,
            "{name}: want 502/503, got {}",
            r.status
        );
        assert_sidecar_error(
            &r,
            r.status,
            &["exchange", "token", "civic auth", "response"],
        );
        assert_eq!(
            env.hub.request_count(),
            0,
            "{name}: nothing cached, nothing forwarded"
        );
        env.auth.set_default(AuthReply::ok());
        let mut ok = false;
        for i in 0..50 {
            if env.call(10 + i).await.unwrap().status == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(ok, "{name}: recovered after Civic Auth did");
        env.finish();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_retry_after_honoured_and_backoff() {
    let env = failing_env(
        "s16_retry_after_honoured_and_backoff",
        AuthReply::too_many_requests(5),
    )
    .await;
    let r = env.call(1).await.unwrap();
    assert_eq!(r.status, 503);
    let after_first = env.auth.calls();
    let t0 = Instant::now();
    // Hammer for 2 s: Retry-After: 5 means no further call to Civic Auth in that window.
    let statuses = drive(&env, Duration::from_secs(2), Duration::from_millis(50)).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert_eq!(
        env.auth.calls(),
        after_first,
        "Retry-After: 5 honoured ({} workload requests)",
        statuses.len()
    );
    env.finish();

    // Plain 500s: retried, but with exponential backoff, not once per request.
    let env = failing_env("s16_backoff_on_5xx", AuthReply::status(500)).await;
    let statuses = drive(&env, Duration::from_secs(4), Duration::from_millis(40)).await;
    let calls = env.auth.calls();
    assert!(statuses.len() >= 40, "drove {} requests", statuses.len());
    assert!(calls >= 2, "failures are retried (calls {calls})");
    assert!(
        calls <= 10,
        "backoff: {calls} exchange calls for {} requests in 4 s",
        statuses.len()
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_exchange_timeout_at_most_15s() {
    let env = failing_env(
        "s16_exchange_timeout_at_most_15s",
        AuthReply::ok().delay(Duration::from_secs(40)),
    )
    .await;
    let t0 = Instant::now();
    let r = env.call(1).await.unwrap();
    let took = t0.elapsed();
    assert_sidecar_error(&r, 503, &["timed out", "timeout", "exchange"]);
    assert!(
        took <= Duration::from_millis(16_500),
        "exchange timeout must be ≤ 15 s, took {took:?}"
    );
    assert!(r.header("retry-after").is_some());
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_upstream_401_reexchanges_and_replays_once() {
    let env = Setup::new("s17_upstream_401_reexchanges_and_replays_once")
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    let calls = env.auth.calls();
    let base = env.hub.base_url();
    env.hub.push(HubReply::unauthorized(&base));
    let payload = json!({"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"replay me"}}});
    let r = env.post(&payload).await.unwrap();
    assert_eq!(r.status, 200, "the replay succeeded: {}", r.text());
    assert_eq!(r.json().unwrap()["id"], 42);
    assert_eq!(env.auth.calls(), calls + 1, "exactly one new exchange");
    let reqs = env.hub.requests();
    let (first, replay) = (&reqs[reqs.len() - 2], &reqs[reqs.len() - 1]);
    assert_eq!(
        first.body, replay.body,
        "the buffered body is replayed byte for byte"
    );
    assert_eq!(replay.json().unwrap(), payload);
    assert_secret_ne!(first.bearer, replay.bearer, "the replay uses the new token");
    assert_secret_eq!(
        replay.bearer.as_deref(),
        env.auth.issued_tokens().last().map(String::as_str)
    );
    assert!(r.header("www-authenticate").is_none());
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_second_401_gives_502_without_challenge() {
    let env = Setup::new("s18_second_401_gives_502_without_challenge")
        .start()
        .await
        .unwrap();
    assert_eq!(env.call(1).await.unwrap().status, 200);
    env.hub.set_validator(|_| false);
    let n = env.hub.request_count();
    let r = env.call(2).await.unwrap();
    assert!(
        r.status == 502 || r.status == 401,
        "want 502 (or 401 without challenge), got {}",
        r.status
    );
    assert!(
        r.header("www-authenticate").is_none(),
        "the hub's challenge never reaches the workload"
    );
    assert!(
        !r.text().contains("resource_metadata"),
        "no resource_metadata in the body: {}",
        r.text()
    );
    assert!(!r.text().contains("oauth-protected-resource"));
    if r.status == 502 {
        assert_sidecar_error(&r, 502, &["401", "unauthorized", "rejected", "hub"]);
    }
    assert_eq!(
        env.hub.request_count(),
        n + 2,
        "one request plus at most one replay"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_403_and_other_statuses_pass_through_without_challenge() {
    let env = Setup::new("s19_403_and_other_statuses_pass_through_without_challenge")
        .start()
        .await
        .unwrap();
    let base = env.hub.base_url();
    let cases = [
        HubReply::json_status(403, &json!({"error":"insufficient_scope","error_description":"needs mcp:tools"}))
            .header(
                "www-authenticate",
                &format!("Bearer error=\"insufficient_scope\", scope=\"mcp:tools\", resource_metadata=\"{base}/.well-known/oauth-protected-resource/hub/mcp\""),
            )
            .header("x-hub-detail", "scope"),
        HubReply::body(500, "text/plain", "hub exploded").header("x-hub-detail", "boom"),
        HubReply::json_status(429, &json!({"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"slow down"}}))
            .header("retry-after", "17")
            .header("x-hub-detail", "throttle"),
        HubReply::body(409, "application/json", "{\"conflict\":true}").header("x-hub-detail", "conflict"),
    ];
    for (i, reply) in cases.into_iter().enumerate() {
        env.hub.push(reply);
        let r = env.call(i as u64).await.unwrap();
        let expect = [403, 500, 429, 409][i];
        assert_eq!(r.status, expect);
        assert!(
            r.header("www-authenticate").is_none(),
            "{expect}: WWW-Authenticate stripped"
        );
        assert!(
            r.header("x-hub-detail").is_some(),
            "{expect}: end-to-end headers kept"
        );
        let want_body = [
            "{\"error\":\"insufficient_scope\",\"error_description\":\"needs mcp:tools\"}",
            "hub exploded",
            "{\"error\":{\"code\":-32000,\"message\":\"slow down\"},\"id\":null,\"jsonrpc\":\"2.0\"}",
            "{\"conflict\":true}",
        ][i];
        if expect == 429 {
            assert_eq!(
                r.json().unwrap(),
                serde_json::from_str::<serde_json::Value>(want_body).unwrap()
            );
            assert_eq!(r.header("retry-after"), Some("17"));
        } else {
            assert_eq!(r.text(), want_body, "{expect}: body unchanged");
        }
    }
    assert_eq!(env.auth.calls(), 1, "a 403 is not a reason to re-exchange");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s20_no_secrets_in_logs_metrics_or_error_bodies() {
    let env = Setup::new("s20_no_secrets_in_logs_metrics_or_error_bodies")
        .env(c::ENV_LOG, "trace")
        .env(c::ENV_LOG_FORMAT, "text")
        .subject(Subject::Header("authorization".into()))
        .start()
        .await
        .unwrap();
    let user = jwt::mint_subject("erin", Duration::from_secs(600));
    let send_as = |subject: String| {
        let req = env
            .request(Method::POST)
            .header(header::AUTHORIZATION, format!("Bearer {subject}"))
            .body(body(1))
            .unwrap();
        env.send(req)
    };
    // Success, a 401 replay, an invalid subject, an expired subject, a Civic Auth failure.
    assert_eq!(send_as(user.clone()).await.unwrap().status, 200);
    env.hub.push(HubReply::unauthorized(&env.hub.base_url()));
    assert_eq!(send_as(user.clone()).await.unwrap().status, 200);
    let forged = format!(
        "{}x",
        jwt::mint_subject("mallory", Duration::from_secs(600))
    );
    civic_testkit::secrets::register_secret(forged.clone());
    let r = send_as(forged).await.unwrap();
    assert_sidecar_error(&r, 502, &["invalid_grant"]);
    let expired = jwt::mint_subject_at("old", jwt::now_unix() - 10);
    let r = send_as(expired).await.unwrap();
    assert!(r.status >= 400);
    assert_no_secret_in(&r.text(), "error body");
    env.auth.push(AuthReply::status(500));
    let r = send_as(jwt::mint_subject("frank", Duration::from_secs(600)))
        .await
        .unwrap();
    assert_no_secret_in(&r.text(), "error body");
    let metrics = env.sidecar.metrics().await.unwrap();
    assert_no_secret_in(&metrics, "/metrics");
    assert!(
        env.sidecar.lines().len() >= 5,
        "the scan needs logs to look at; trace logging produced {} lines",
        env.sidecar.lines().len()
    );
    // The issued tokens were used upstream: they are known secrets for the output scan in finish().
    assert!(
        env.auth
            .issued_tokens()
            .iter()
            .all(|t| issued_by_fake_auth(t))
    );
    env.finish();
}
