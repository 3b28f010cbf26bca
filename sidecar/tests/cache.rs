// Token-cache behaviour from issue 2 (statements 11-14 under load): 1,000 concurrent first
// requests make one exchange, a warm cache makes none, refresh never blocks a request, rotated
// subject and secret files are picked up, an outage is ridden out until the token expires.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use civic_testkit::secrets::{CLIENT_SECRET, CLIENT_SECRET_ROTATED};
use civic_testkit::{AuthReply, client, jwt};
use common::{Setup, Subject, assert_sidecar_error};
use http::{Method, header};
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_cache_1000_concurrent_first_requests_one_exchange() {
    let env = Setup::new("s14_cache_1000_concurrent_first_requests_one_exchange")
        .subject(Subject::Header("authorization".into()))
        .start_with(|auth, _| auth.set_default(AuthReply::ok().delay(Duration::from_millis(300))))
        .await
        .unwrap();
    let subject = jwt::mint_subject("load-user", Duration::from_secs(600));
    let addr = env.addr();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(1000));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(1000);
    for i in 0..1000u64 {
        let subject = subject.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let req = client::mcp_request(addr, Method::POST)
                .header(header::AUTHORIZATION, format!("Bearer {subject}"))
                .body(Full::new(Bytes::from(
                    client::jsonrpc(i, "tools/list").to_string(),
                )))
                .unwrap();
            client::send(addr, req).await.map(|r| r.status).unwrap_or(0)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    eprintln!("1000 concurrent first requests in {:?}", t0.elapsed());
    assert_eq!(ok, 1000, "every request succeeded");
    assert_eq!(
        env.auth.calls(),
        1,
        "exactly one exchange for 1,000 concurrent first callers"
    );
    let tokens: std::collections::BTreeSet<_> = env
        .hub
        .requests()
        .into_iter()
        .filter_map(|r| r.bearer)
        .collect();
    assert_eq!(tokens.len(), 1);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_cache_warm_zero_exchanges_per_request() {
    let env = Setup::new("s11_cache_warm_zero_exchanges_per_request")
        .start()
        .await
        .unwrap();
    let calls = env.auth.calls();
    let addr = env.addr();
    let mut tasks = Vec::new();
    for w in 0..10u64 {
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..50 {
                if client::post_mcp(addr, &client::jsonrpc(w * 100 + i, "tools/list"))
                    .await
                    .map(|r| r.status)
                    .unwrap_or(0)
                    == 200
                {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 500);
    let per_request = (env.auth.calls() - calls) as f64 / 500.0;
    eprintln!("warm cache: {per_request} exchanges per request");
    assert_eq!(
        env.auth.calls(),
        calls,
        "0 exchanges per request on a warm cache"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_cache_refresh_before_expiry_never_blocks() {
    // expires_in 8: refresh due after 4 s; the refresh exchange takes 1.5 s.
    let env = Setup::new("s11_cache_refresh_before_expiry_never_blocks")
        .start_with(|auth, _| {
            auth.set_script(|n, _| {
                Some(if n == 0 {
                    AuthReply::ok_expires_in(8)
                } else {
                    AuthReply::ok_expires_in(8).delay(Duration::from_millis(1500))
                })
            })
        })
        .await
        .unwrap();
    let t0 = env.auth.requests()[0].at;
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while t0.elapsed() < Duration::from_millis(7000) {
        let t = Instant::now();
        let r = env.call(n).await.unwrap();
        assert_eq!(r.status, 200, "request at {:?}", t0.elapsed());
        worst = worst.max(t.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    eprintln!("{n} requests across a refresh, slowest {worst:?}");
    assert!(env.auth.calls() >= 2, "refreshed before expiry");
    let refresh_at = env.auth.requests()[1].at.duration_since(t0);
    assert!(
        refresh_at < Duration::from_secs(8),
        "refresh started before expiry ({refresh_at:?})"
    );
    assert!(
        worst < Duration::from_millis(700),
        "a request waited {worst:?} on the 1.5 s refresh"
    );
    let new = env.auth.issued_tokens()[1].clone();
    assert_secret_eq!(
        env.hub.last_request().unwrap().bearer.as_deref(),
        Some(new.as_str()),
        "the refreshed token is in use"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_cache_rotated_subject_file_picked_up() {
    let env = Setup::new("s13_cache_rotated_subject_file_picked_up")
        .start()
        .await
        .unwrap();
    for round in 0..3u64 {
        let subject = jwt::mint_subject(&format!("sa-round-{round}"), Duration::from_secs(900));
        env.rotate_subject(&subject);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(env.call(round).await.unwrap().status, 200);
        assert_secret_eq!(
            env.auth.requests().last().unwrap().field("subject_token"),
            Some(subject.as_str()),
            "round {round}"
        );
        assert_secret_eq!(
            env.hub.last_request().unwrap().bearer.as_deref(),
            env.auth.issued_tokens().last().map(String::as_str)
        );
    }
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_rotated_secret_file_picked_up() {
    let env = Setup::new("cache_rotated_secret_file_picked_up")
        .start_with(|auth, _| auth.set_default(AuthReply::ok_expires_in(4)))
        .await
        .unwrap();
    assert_secret_eq!(
        env.auth.requests()[0].basic.as_ref().map(|b| b.1.as_str()),
        Some(CLIENT_SECRET)
    );
    // Rotate: Civic Auth now accepts only the new secret; the file changes in place.
    env.auth.set_client_secrets(&[CLIENT_SECRET_ROTATED]);
    civic_testkit::fs::write_file(&env.secret_file, CLIENT_SECRET_ROTATED);
    // The 4 s token is due for refresh after 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ok_with_new = false;
    for i in 0..40 {
        let r = env.call(i).await.unwrap();
        let last = env.auth.requests().last().cloned().unwrap();
        if r.status == 200
            && last.outcome == "issued"
            && last.basic.as_ref().map(|b| b.1.as_str()) == Some(CLIENT_SECRET_ROTATED)
        {
            ok_with_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok_with_new,
        "the next exchange uses the rotated secret without a restart: {:?}",
        env.auth.requests()
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_outage_serves_cached_token_until_expiry_then_503() {
    // First token: expires_in 6 s, so reused for X = 6 - min(30, 3) = 3 s (statement 11); Civic
    // Auth is down after it. The cached token is served through the outage up to X at least,
    // and once it has really expired the workload gets a clear 503.
    let env = Setup::new("cache_outage_serves_cached_token_until_expiry_then_503")
        .start_with(|auth, _| {
            auth.set_script(|n, _| {
                Some(if n == 0 {
                    AuthReply::ok_expires_in(6)
                } else {
                    AuthReply::status(503)
                })
            })
        })
        .await
        .unwrap();
    let t0 = env.auth.requests()[0].at;
    let token = env.auth.issued_tokens()[0].clone();
    while t0.elapsed() < Duration::from_millis(2800) {
        let r = env.call(1).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "still-valid token served through the outage at {:?}",
            t0.elapsed()
        );
        assert_secret_eq!(
            env.hub.last_request().unwrap().bearer.as_deref(),
            Some(token.as_str())
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_millis(6500).saturating_sub(t0.elapsed())).await;
    assert!(
        env.auth.calls() >= 2,
        "refresh was attempted during the outage: exchanges at {:?}",
        env.auth
            .requests()
            .iter()
            .map(|r| r.at.duration_since(t0))
            .collect::<Vec<_>>()
    );
    let n = env.hub.request_count();
    let r = env.call(2).await.unwrap();
    assert_sidecar_error(&r, 503, &["exchange", "civic auth", "token", "unavailable"]);
    assert!(r.header("retry-after").is_some(), "503 with Retry-After");
    assert_eq!(env.hub.request_count(), n, "an expired token is never sent");
    // Recovery.
    env.auth.set_script(|_, _| Some(AuthReply::ok()));
    let mut recovered = false;
    for i in 0..60 {
        if env.call(100 + i).await.unwrap().status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "serves again once Civic Auth is back");
    env.finish();
}
