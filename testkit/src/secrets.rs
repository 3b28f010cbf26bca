//! Recognisable secret values used by the fakes, and a registry of every secret a test handed out.
//!
//! Every token the testkit mints is a JWT whose header is [`JWT_HEADER_B64`] (it carries a
//! testkit-specific `kid`), and every client secret contains [`SECRET_MARKER`]. So a plain
//! `grep` over the captured logs (`tests/scan_logs.sh`) finds any leaked secret, and
//! [`crate::process::SidecarProcess`] checks its own output against [`known_secrets`].

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

/// Client ID the fake Civic Auth accepts by default.
pub const CLIENT_ID: &str = "civic-testkit-client";
/// Substring of every client secret the testkit uses.
pub const SECRET_MARKER: &str = "cts-SECRET";
/// Client secret the fake Civic Auth accepts by default.
pub const CLIENT_SECRET: &str = "cts-SECRET-0c8e41f7a2d94b55";
/// A second secret, for rotation tests.
pub const CLIENT_SECRET_ROTATED: &str = "cts-SECRET-rotated-5d21b7e0c3aa";
/// A secret the fake never accepts.
pub const CLIENT_SECRET_WRONG: &str = "cts-SECRET-wrong-9f00d1e2";
/// Profile UUID used by the tests.
pub const PROFILE_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
/// HS256 key shared by the fake Civic Auth and every upstream that verifies its tokens.
pub const JWT_KEY: &[u8] = b"civic-testkit-hs256-shared-key-for-tests-only";
/// The JWT header of every testkit token, base64url: `{"alg":"HS256","typ":"JWT","kid":"civic-testkit"}`.
pub const JWT_HEADER_B64: &str =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImNpdmljLXRlc3RraXQifQ";
/// `iss` of tokens issued by the fake Civic Auth (what the fake hub accepts).
pub const AUTH_ISSUER: &str = "https://auth.civic.test";
/// `iss` of subject tokens minted for workloads (what the fake hub rejects).
pub const SUBJECT_ISSUER: &str = "https://idp.workload.test";

fn registry() -> &'static Mutex<BTreeSet<String>> {
    static REG: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    REG.get_or_init(|| {
        Mutex::new(
            [CLIENT_SECRET, CLIENT_SECRET_ROTATED, CLIENT_SECRET_WRONG]
                .into_iter()
                .map(String::from)
                .collect(),
        )
    })
}

/// Remember a secret value so that every later log scan in this process looks for it.
pub fn register_secret(value: impl Into<String>) {
    let value = value.into();
    if value.len() >= 8 {
        registry().lock().expect("secret registry").insert(value);
    }
}

/// Every secret value handed out in this process so far (client secrets, subject and access tokens).
pub fn known_secrets() -> Vec<String> {
    registry()
        .lock()
        .expect("secret registry")
        .iter()
        .cloned()
        .collect()
}

/// The strings to look for in a text so that a leak of `secret`, even a partial one, is found:
/// the whole value and, for JWTs, each of the payload and signature segments.
pub fn leak_needles(secret: &str) -> Vec<&str> {
    let mut needles = vec![secret];
    let parts: Vec<&str> = secret.split('.').collect();
    if parts.len() == 3 {
        needles.extend(parts[1..].iter().filter(|p| p.len() >= 16));
    }
    needles
}

/// Names of the secrets (never the values) found in `text`: `client secret`, `jwt` or `secret`.
pub fn find_leaks(text: &str, secrets: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    if text.contains(SECRET_MARKER) {
        found.push("client secret marker".to_string());
    }
    if text.contains(JWT_HEADER_B64) {
        found.push("testkit JWT header".to_string());
    }
    for s in secrets {
        if leak_needles(s).iter().any(|n| text.contains(n)) {
            let kind = if s.contains(SECRET_MARKER) {
                "client secret"
            } else {
                "token"
            };
            found.push(format!("{kind} ({} chars)", s.len()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_partial_jwt_leaks() {
        let tok =
            format!("{JWT_HEADER_B64}.eyJzdWIiOiJhYmNkZWZnaGlqayJ9.c2lnbmF0dXJlLXNlZ21lbnQtMTIz");
        register_secret(tok.clone());
        let secrets = known_secrets();
        assert!(find_leaks("nothing here", &secrets).is_empty());
        assert!(!find_leaks("sig=c2lnbmF0dXJlLXNlZ21lbnQtMTIz", &secrets).is_empty());
        assert!(!find_leaks(CLIENT_SECRET, &secrets).is_empty());
    }
}
