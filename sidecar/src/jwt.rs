//! Reading claims of a JWT without verifying it: `exp` only bounds cache lifetimes, `iss` and
//! `aud` only name what Civic Auth must trust in an error message; never to trust anything.

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};

/// Largest JWT payload decoded, to bound work on hostile input.
const MAX_PAYLOAD_LEN: usize = 16 * 1024;

/// Longest `iss` or `aud` value shown; longer ones (or any with other than printable ASCII) are
/// not shown at all, as the token may come from the workload.
const MAX_SHOWN_CLAIM_LEN: usize = 256;

/// The claims of a compact JWS, if the token looks like one.
fn claims(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.is_empty() || payload.len() > MAX_PAYLOAD_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .or_else(|_| URL_SAFE.decode(payload))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `iss` claim and the first `aud`, when short printable text: what a token-exchange
/// provider must trust for this token.
pub fn issuer_and_audience(token: &str) -> (Option<String>, Option<String>) {
    let Some(claims) = claims(token) else {
        return (None, None);
    };
    let shown = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_str)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_SHOWN_CLAIM_LEN
                    && s.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_owned)
    };
    let aud = match claims.get("aud") {
        Some(serde_json::Value::Array(list)) => shown(list.first()),
        other => shown(other),
    };
    (shown(claims.get("iss")), aud)
}

/// The `exp` claim (seconds since the Unix epoch) of a compact JWS, if the token looks like one.
pub fn expiry(token: &str) -> Option<i64> {
    let claims = claims(token)?;
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
    fn reads_issuer_and_audience_only_as_short_printable_text() {
        let t = make(&json!({"iss": "https://issuer.example", "aud": ["civic", "x"]}));
        assert_eq!(
            issuer_and_audience(&t),
            (Some("https://issuer.example".into()), Some("civic".into()))
        );
        let t = make(&json!({"iss": "a b\nc", "aud": "x".repeat(300)}));
        assert_eq!(issuer_and_audience(&t), (None, None));
        assert_eq!(issuer_and_audience("not-a-jwt"), (None, None));
    }

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
