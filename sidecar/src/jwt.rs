//! Reading the `exp` claim of a JWT without verifying it: only used to bound cache lifetimes,
//! never to trust anything.

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};

/// Largest JWT payload decoded, to bound work on hostile input.
const MAX_PAYLOAD_LEN: usize = 16 * 1024;

/// The `exp` claim (seconds since the Unix epoch) of a compact JWS, if the token looks like one.
pub fn expiry(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.is_empty() || payload.len() > MAX_PAYLOAD_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| URL_SAFE.decode(payload))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("exp")? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) fn make(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.c2ln")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_exp() {
        assert_eq!(
            expiry(&make(&json!({"exp": 1_900_000_000, "sub": "a"}))),
            Some(1_900_000_000)
        );
        assert_eq!(
            expiry(&make(&json!({"exp": 1_900_000_000.7}))),
            Some(1_900_000_000)
        );
    }

    #[test]
    fn not_a_jwt() {
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(expiry("a.b"), None);
        assert_eq!(expiry("a.!!!.c"), None);
        assert_eq!(expiry(&make(&json!({"sub": "no exp"}))), None);
        assert_eq!(expiry(&make(&json!({"exp": "soon"}))), None);
        assert_eq!(expiry(&format!("{}.x", make(&json!({"exp": 1})))), None);
    }
}
