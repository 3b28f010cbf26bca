// Several profiles in one sidecar: the default on `/hub/mcp`, each named one on
// `/profiles/<name>/hub/mcp`, each with its own profile-locked token for the same subject.
// Real binary, fake Civic Auth (which records each exchange's `civic_profile` and mints it
// into the token), fake hub or an official-SDK server, official SDK clients.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use civic_sidecar::contract as c;
use civic_testkit::client::{self, jsonrpc};
use civic_testkit::hub::HubReply;
use civic_testkit::jwt;
use civic_testkit::secrets::PROFILE_ID;
use common::{
    Env, Setup, Subject, Upstream, assert_sidecar_error, check_report, logged_header,
    read_header_log, require_peers, run_client, start_upstream, token_digest,
};
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::Value;

const SUPPORT: &str = "5b3d1a52-8f0e-4c7a-9a61-0d3e5c2b7f11";
const BILLING: &str = "c1f0e9d8-2b3a-4c5d-8e7f-a0b1c2d3e4f5";

fn profiles_env() -> String {
    format!("support={SUPPORT},billing-tools={BILLING}")
}

/// The three routes and the profile each must be locked to.
fn routes() -> [(&'static str, &'static str); 3] {
    [
        ("/hub/mcp", PROFILE_ID),
        ("/profiles/support/hub/mcp", SUPPORT),
        ("/profiles/billing-tools/hub/mcp", BILLING),
    ]
}

/// POST `body` to `path` of the sidecar, with `extra` headers.
async fn post_to(
    env: &Env,
    path: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> client::HttpResponse {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, env.addr().to_string())
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    env.send(req).await.unwrap()
}

/// The `civic_profile` claim the fake Civic Auth minted into `bearer` ("Bearer <jwt>").
fn locked_profile(bearer: &str) -> Option<String> {
    let token = bearer.strip_prefix("Bearer ").unwrap_or(bearer);
    jwt::decode_unverified(token)?["civic_profile"]
        .as_str()
        .map(String::from)
}

/// The `civic_profile` of every exchange the fake Civic Auth answered, in order.
fn exchanged_profiles(env: &Env) -> Vec<Option<String>> {
    env.auth
        .requests()
        .iter()
        .map(|r| r.field("civic_profile").map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_profiles_official_clients_each_locked_to_its_own() {
    require_peers();
    let dir = civic_testkit::fs::TempDir::new("profiles-peer-log");
    let header_log = dir.path().join("headers.jsonl");
    let name = "three_profiles_official_clients";
    let peer = start_upstream(name, &Upstream::PythonDualEra { gzip: false }, &header_log).await;
    let env = Setup::new(name)
        .hub_url(peer.url())
        .env(c::ENV_PROFILES, profiles_env())
        .start()
        .await
        .unwrap();
    // Ready means every profile already has its token: one exchange each, none more.
    let mut exchanged: Vec<String> = exchanged_profiles(&env).into_iter().flatten().collect();
    exchanged.sort();
    let mut want: Vec<String> = routes().iter().map(|(_, p)| p.to_string()).collect();
    want.sort();
    assert_eq!(
        exchanged, want,
        "one exchange per profile, each locked to it"
    );

    let base = format!("http://{}", env.addr());
    let mut seen_before = 0;
    for (path, profile) in routes() {
        for client in ["python-auto", "node"] {
            let report = run_client(client, &format!("{base}{path}")).await;
            check_report(&report).unwrap_or_else(|e| panic!("{client} on {path}: {e}"));
        }
        // Every request this route's clients made reached the hub with a token locked to the
        // route's profile, and with the profile header naming it.
        let log = read_header_log(&header_log);
        assert!(
            log.len() > seen_before,
            "{path}: nothing reached the upstream"
        );
        for entry in &log[seen_before..] {
            let values = |name: &str| logged_header(entry, name);
            // The upstream logs a digest of each bearer: find the token it stands for.
            let auth = values("authorization");
            assert_eq!(auth.len(), 1, "{path}: one Authorization");
            let digest = auth[0].strip_prefix("Bearer ").unwrap_or_default();
            let token = env
                .auth
                .issued_tokens()
                .into_iter()
                .find(|t| token_digest(t) == digest)
                .unwrap_or_else(|| panic!("{path}: a bearer the sidecar never obtained"));
            assert_eq!(
                locked_profile(&token).as_deref(),
                Some(profile),
                "{path}: the token is locked to its own profile"
            );
            assert_eq!(
                values("x-civic-profile-id"),
                vec![profile.to_string()],
                "{path}"
            );
            assert_ne!(entry["status"], 401, "{path}");
        }
        seen_before = log.len();
    }
    assert_eq!(
        env.auth.calls(),
        3,
        "tokens are cached per profile, not per call"
    );
    let metrics = env.sidecar.metrics().await.unwrap();
    for label in ["default", "support", "billing-tools"] {
        assert!(
            metrics.contains(&format!("code=\"200\",profile=\"{label}\"")),
            "requests_total lacks profile {label}:\n{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "civic_sidecar_exchanges_total{{profile=\"{label}\",result=\"ok\"}} 1"
            )),
            "exchanges_total lacks profile {label}:\n{metrics}"
        );
    }
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_mode_two_users_three_profiles_with_401_replay() {
    let env = Setup::new("profiles_per_user_mode")
        .subject(Subject::Header("x-user-token".into()))
        .env(c::ENV_PROFILES, profiles_env())
        .start()
        .await
        .unwrap();
    let users = ["user:alice", "user:bob"];
    let tokens: Vec<String> = users
        .iter()
        .map(|u| jwt::mint_subject(u, Duration::from_secs(3600)))
        .collect();
    for round in 0..2 {
        for (user, token) in users.iter().zip(&tokens) {
            for (path, profile) in routes() {
                let bearer = format!("Bearer {token}");
                let r = post_to(
                    &env,
                    path,
                    &jsonrpc(1, "tools/list"),
                    &[("x-user-token", &bearer)],
                )
                .await;
                assert_eq!(r.status, 200, "{user} {path} round {round}: {}", r.text());
                let seen = env.hub.last_request().unwrap();
                let claims = jwt::decode_unverified(seen.bearer.as_deref().unwrap()).unwrap();
                assert_eq!(claims["sub"], *user, "{path}");
                assert_eq!(claims["civic_profile"], profile, "{user} {path}");
                assert_eq!(
                    seen.header_values("x-civic-profile-id"),
                    vec![profile.to_string()]
                );
                assert!(
                    !seen.has_header("x-user-token"),
                    "the subject header is consumed"
                );
            }
        }
    }
    // One exchange per (user, profile), shared by both rounds.
    let per_pair: BTreeMap<Option<String>, usize> =
        exchanged_profiles(&env)
            .into_iter()
            .fold(BTreeMap::new(), |mut m, p| {
                *m.entry(p).or_default() += 1;
                m
            });
    assert_eq!(per_pair.len(), 3, "{per_pair:?}");
    assert!(per_pair.values().all(|n| *n == 2), "{per_pair:?}");

    // A 401 on one profile renews that profile's token only, and replays the request with it.
    let calls = env.auth.calls();
    env.hub.push(HubReply::unauthorized(&env.hub.base_url()));
    let bearer = format!("Bearer {}", tokens[0]);
    let r = post_to(
        &env,
        "/profiles/billing-tools/hub/mcp",
        &jsonrpc(7, "tools/list"),
        &[("x-user-token", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "the replay succeeded: {}", r.text());
    assert_eq!(env.auth.calls(), calls + 1, "exactly one new exchange");
    assert_eq!(
        exchanged_profiles(&env)
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some(BILLING),
        "the renewed token is the billing profile's"
    );
    let replay = env.hub.last_request().unwrap();
    assert_eq!(
        locked_profile(replay.bearer.as_deref().unwrap()).as_deref(),
        Some(BILLING)
    );
    // The other profiles kept their tokens.
    let r = post_to(
        &env,
        "/profiles/support/hub/mcp",
        &jsonrpc(8, "tools/list"),
        &[("x-user-token", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        env.auth.calls(),
        calls + 1,
        "support's token was not renewed"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_reaches_only_the_profiles_listed() {
    let env = Setup::new("profiles_only_listed")
        .env(c::ENV_PROFILES, profiles_env())
        .start()
        .await
        .unwrap();
    let listed: BTreeSet<&str> = routes().iter().map(|(_, p)| *p).collect();
    let unlisted = "99999999-9999-4999-8999-999999999999";

    let r = post_to(
        &env,
        "/profiles/sales/hub/mcp",
        &jsonrpc(1, "tools/list"),
        &[],
    )
    .await;
    assert_sidecar_error(&r, 404, &["sales", "support, billing-tools"]);
    for path in [
        "/profiles/default/hub/mcp",
        "/profiles/SUPPORT/hub/mcp",
        "/profiles/support/hub/mcp/",
        "/profiles/support/../billing-tools/hub/mcp",
        "/profiles/support%2F..%2Fbilling-tools/hub/mcp",
        "/profiles/support/hub/mcp/../../billing-tools/hub/mcp",
        "/profiles//hub/mcp",
        "/profiles/support",
        "/profiles/",
        "/hub/mcp/profiles/support",
    ] {
        let r = post_to(&env, path, &jsonrpc(1, "tools/list"), &[]).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    let before = env.hub.request_count();
    // Whatever the workload says about profiles in the query or the header, each route's
    // request reaches the hub locked to the route's profile only.
    for (path, profile) in routes() {
        for (query, extra) in [
            (format!("?profile={unlisted}&lock=false&keep=1"), vec![]),
            (String::new(), vec![("x-civic-profile-id", unlisted)]),
            (
                format!("?accountId=x&skills={unlisted}"),
                vec![("x-civic-profile-id", unlisted)],
            ),
        ] {
            let r = post_to(
                &env,
                &format!("{path}{query}"),
                &jsonrpc(2, "tools/list"),
                &extra,
            )
            .await;
            assert_eq!(r.status, 200, "{path}{query}: {}", r.text());
            let seen = env.hub.last_request().unwrap();
            assert_eq!(
                seen.header_values("x-civic-profile-id"),
                vec![profile.to_string()]
            );
            assert_eq!(
                locked_profile(seen.bearer.as_deref().unwrap()).as_deref(),
                Some(profile)
            );
            let q = seen.query.clone().unwrap_or_default();
            assert!(
                !q.contains(unlisted) && !q.contains("profile=") && !q.contains("lock="),
                "{q}"
            );
            if query.contains("keep=1") {
                assert!(q.contains("keep=1"), "other parameters pass: {q}");
            }
        }
    }
    assert_eq!(env.hub.request_count(), before + 9);
    for r in env.hub.requests() {
        let p = locked_profile(r.bearer.as_deref().unwrap_or_default()).unwrap();
        assert!(
            listed.contains(p.as_str()),
            "an unlisted profile reached the hub: {p}"
        );
    }
    let exchanged: BTreeSet<String> = exchanged_profiles(&env).into_iter().flatten().collect();
    assert_eq!(
        exchanged.len(),
        3,
        "only the listed profiles were ever exchanged: {exchanged:?}"
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_when_every_profile_has_a_token() {
    // Civic Auth refuses the billing profile: the sidecar stays unready and says which one.
    let env = Setup::new("profiles_readiness")
        .env(c::ENV_PROFILES, profiles_env())
        .readiness(civic_testkit::Readiness::Live)
        .start_with(|auth, _| {
            auth.set_script(|_, req| {
                (req.field("civic_profile") == Some(BILLING))
                    .then(|| civic_testkit::AuthReply::error(400, "invalid_target"))
            });
        })
        .await
        .unwrap();
    let admin = env.sidecar.admin_addr();
    // The first exchanges may still be in flight: wait until billing's failure is known.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let readyz = loop {
        let r = client::get(admin, "/readyz").await.unwrap();
        if r.text().contains("invalid_target") || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(readyz.status, 503, "{}", readyz.text());
    assert!(
        readyz.text().contains("profile billing-tools") && readyz.text().contains("invalid_target"),
        "readyz names the failing profile: {}",
        readyz.text()
    );
    // The other profiles serve meanwhile; billing's requests get the exchange's error.
    let ok = post_to(
        &env,
        "/profiles/support/hub/mcp",
        &jsonrpc(1, "tools/list"),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let refused = post_to(
        &env,
        "/profiles/billing-tools/hub/mcp",
        &jsonrpc(2, "tools/list"),
        &[],
    )
    .await;
    assert_sidecar_error(&refused, 502, &["invalid_target"]);
    env.finish();
}
