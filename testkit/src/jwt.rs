//! JWT-shaped HS256 tokens: minted by the fakes, verifiable by the test upstreams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde_json::{Map, Value, json};

use crate::secrets::{self, AUTH_ISSUER, JWT_HEADER_B64, JWT_KEY, SUBJECT_ISSUER};

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A process-unique token id.
pub fn unique_jti(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sign `claims` (a JSON object) with the shared test key. The token is registered as a secret.
pub fn mint(claims: &Value) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{JWT_HEADER_B64}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, JWT_KEY);
    let sig = B64.encode(hmac::sign(&key, signing_input.as_bytes()).as_ref());
    let token = format!("{signing_input}.{sig}");
    secrets::register_secret(token.clone());
    token
}

/// A workload subject token (e.g. a projected service-account token) for `sub`, expiring at
/// the absolute Unix time `exp`.
pub fn mint_subject_at(sub: &str, exp: u64) -> String {
    mint(&json!({
        "iss": SUBJECT_ISSUER,
        "sub": sub,
        "aud": "civic",
        "iat": now_unix(),
        "exp": exp,
        "jti": unique_jti("subj"),
    }))
}

/// A workload subject token valid for `ttl` from now.
pub fn mint_subject(sub: &str, ttl: Duration) -> String {
    mint_subject_at(sub, now_unix() + ttl.as_secs())
}

/// A Civic access token as the fake Civic Auth issues it (also usable as a static
/// `CIVIC_ACCESS_TOKEN_FILE` token). `exp: None` leaves the claim out.
pub fn mint_access(sub: &str, exp: Option<u64>, profile: Option<&str>) -> String {
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(AUTH_ISSUER));
    claims.insert("sub".into(), json!(sub));
    claims.insert("iat".into(), json!(now_unix()));
    if let Some(exp) = exp {
        claims.insert("exp".into(), json!(exp));
    }
    if let Some(p) = profile {
        claims.insert("civic_profile".into(), json!(p));
    }
    claims.insert("jti".into(), json!(unique_jti("acc")));
    mint(&Value::Object(claims))
}

/// Why a token did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    BadSignature,
    Expired,
}

/// Decode the claims without checking the signature.
pub fn decode_unverified(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&B64.decode(p).ok()?).ok()
}

/// Check the signature with the shared key and the `exp` claim (if present) against now.
pub fn verify(token: &str) -> Result<Value, JwtError> {
    let (signing_input, sig) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| JwtError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, JWT_KEY);
    hmac::verify(&key, signing_input.as_bytes(), &sig).map_err(|_| JwtError::BadSignature)?;
    let claims = decode_unverified(token).ok_or(JwtError::Malformed)?;
    if let Some(exp) = claims.get("exp").and_then(Value::as_u64)
        && exp <= now_unix()
    {
        return Err(JwtError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_tamper() {
        let t = mint_subject("system:serviceaccount:ns:sa", Duration::from_secs(60));
        let c = verify(&t).expect("valid");
        assert_eq!(c["sub"], "system:serviceaccount:ns:sa");
        assert!(t.starts_with(JWT_HEADER_B64));
        let mut bad = t.clone();
        bad.push('A');
        assert!(verify(&bad).is_err());
        let expired = mint_subject_at("x", now_unix() - 5);
        assert_eq!(verify(&expired), Err(JwtError::Expired));
        assert_ne!(
            mint_subject("x", Duration::from_secs(5)),
            mint_subject("x", Duration::from_secs(5))
        );
    }
}
