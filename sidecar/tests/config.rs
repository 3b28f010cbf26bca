//! Configuration errors: exit status 2 and exactly one line naming the bad setting, before
//! binding anything; `--help` lists the contract's variables.

mod common;

use std::time::Duration;

use civic_sidecar::contract as c;
use civic_testkit::SidecarProcess;
use civic_testkit::secrets::PROFILE_ID;
use common::bin;

/// A complete valid static-token configuration, then `overrides` (an empty value removes).
async fn run(name: &str, overrides: &[(&str, &str)]) -> civic_testkit::process::Exited {
    let dir = civic_testkit::fs::TempDir::new("config");
    let tok = dir.write("token", "static-token-value-for-config-tests");
    let mut b = SidecarProcess::builder(bin(), name)
        .env(c::ENV_HUB_URL, "http://127.0.0.1:9/hub/mcp")
        .env(c::ENV_TOKEN_URL, "http://127.0.0.1:9/oauth/token")
        .env(c::ENV_PROFILE_ID, PROFILE_ID)
        .env_path(c::ENV_ACCESS_TOKEN_FILE, &tok);
    for (k, v) in overrides {
        b = if v.is_empty() {
            b.remove_env(k)
        } else {
            b.env(k, v)
        };
    }
    b.run_to_exit(Duration::from_secs(10)).await.unwrap()
}

fn flag_of(env: &str) -> String {
    env.trim_start_matches("CIVIC_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_2_with_one_line_naming_the_setting() {
    let dir = civic_testkit::fs::TempDir::new("config-cases");
    let subj = dir.write("subject", "x");
    let subj = subj.to_string_lossy().into_owned();
    // (what, env overrides, the setting the error line must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "bad profile uuid",
            vec![(c::ENV_PROFILE_ID, "not-a-uuid")],
            c::ENV_PROFILE_ID,
        ),
        (
            "http hub off loopback",
            vec![(c::ENV_HUB_URL, "http://app.civic.com/hub/mcp")],
            c::ENV_HUB_URL,
        ),
        (
            "http token url off loopback",
            vec![(c::ENV_TOKEN_URL, "http://auth.civic.com/oauth/token")],
            c::ENV_TOKEN_URL,
        ),
        (
            "unparsable hub url",
            vec![(c::ENV_HUB_URL, "::not a url::")],
            c::ENV_HUB_URL,
        ),
        (
            "bad ttl",
            vec![(c::ENV_TOKEN_TTL_SECONDS, "soon")],
            c::ENV_TOKEN_TTL_SECONDS,
        ),
        (
            "bad listen addr",
            vec![(c::ENV_LISTEN_ADDR, "localhost-ish")],
            c::ENV_LISTEN_ADDR,
        ),
        (
            "bad profile lock",
            vec![(c::ENV_PROFILE_LOCK, "maybe")],
            c::ENV_PROFILE_LOCK,
        ),
        (
            "bad max body",
            vec![(c::ENV_MAX_BODY_BYTES, "-5")],
            c::ENV_MAX_BODY_BYTES,
        ),
        (
            "exchange mode without client id",
            vec![
                (c::ENV_ACCESS_TOKEN_FILE, ""),
                (c::ENV_SUBJECT_TOKEN_FILE, subj.as_str()),
            ],
            c::ENV_CLIENT_ID,
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, overrides, setting)) in cases.iter().enumerate() {
        let out = run(&format!("config_case_{i}"), overrides).await;
        let lines: Vec<&String> = out.lines.iter().filter(|l| !l.trim().is_empty()).collect();
        let names_it = lines
            .iter()
            .any(|l| l.contains(setting) || l.contains(&flag_of(setting)));
        if out.status.code() != Some(2) || lines.len() != 1 || !names_it {
            failures.push(format!(
                "{what}: status {:?}, lines {:?}, want one line naming {setting}",
                out.status.code(),
                out.lines
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_two_subject_modes_or_none() {
    let dir = civic_testkit::fs::TempDir::new("config-modes");
    let subj = dir.write("subject", "x").to_string_lossy().into_owned();
    let secret = dir.write("secret", "s").to_string_lossy().into_owned();
    let both = run(
        "config_two_subject_modes",
        &[
            (c::ENV_SUBJECT_TOKEN_FILE, subj.as_str()),
            (c::ENV_CLIENT_ID, "id"),
            (c::ENV_CLIENT_SECRET_FILE, secret.as_str()),
        ],
    )
    .await;
    assert_eq!(both.status.code(), Some(2), "{:?}", both.lines);
    assert_eq!(
        both.lines.iter().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{:?}",
        both.lines
    );
    let none = run("config_no_subject_mode", &[(c::ENV_ACCESS_TOKEN_FILE, "")]).await;
    assert_eq!(none.status.code(), Some(2), "{:?}", none.lines);
    assert_eq!(
        none.lines.iter().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{:?}",
        none.lines
    );
    let line = none.lines.iter().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        [
            c::ENV_SUBJECT_TOKEN_FILE,
            c::ENV_SUBJECT_HEADER,
            c::ENV_ACCESS_TOKEN_FILE
        ]
        .iter()
        .any(|s| line.contains(s) || line.contains(&flag_of(s))),
        "the line names the subject settings: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_contract_variables() {
    let out = SidecarProcess::builder(bin(), "config_help")
        .arg("--help")
        .run_to_exit(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(out.status.success());
    let text = out.lines.join("\n");
    for v in [
        c::ENV_LISTEN_ADDR,
        c::ENV_ADMIN_ADDR,
        c::ENV_HUB_URL,
        c::ENV_TOKEN_URL,
        c::ENV_CLIENT_ID,
        c::ENV_CLIENT_SECRET_FILE,
        c::ENV_PROFILE_ID,
        c::ENV_SUBJECT_TOKEN_FILE,
        c::ENV_SUBJECT_HEADER,
        c::ENV_ACCESS_TOKEN_FILE,
    ] {
        assert!(text.contains(v), "--help lists {v}");
    }
}
