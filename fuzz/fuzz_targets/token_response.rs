//! The token endpoint's answer: `parse_response` (status + body), then the lifetime math a
//! parsed token goes through, `Retry-After` and JWT `exp` parsing. Never panics; an accepted
//! token fits in an `Authorization` header and in instant arithmetic; no error text carries the
//! client secret or the subject token, even when the server echoes them.
#![no_main]

use std::time::{Duration, Instant, SystemTime};

use civic_sidecar::exchange::{parse_response, parse_retry_after, token_lifetime};
use civic_sidecar::jwt;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-client-secret-0001";
const SUBJECT: &str = "fuzz-subject-token-0001";
const STATUSES: [u16; 16] = [
    200, 201, 204, 299, 100, 302, 400, 401, 403, 404, 429, 500, 502, 503, 599, 600,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector) % STATUSES.len()];
    let now = Instant::now();
    match parse_response(status, None, body, &[SECRET, SUBJECT]) {
        Ok(token) => {
            assert!((200..300).contains(&status), "accepted a {status}");
            let value = token.access_token.expose();
            assert!(!value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()));
            http::HeaderValue::from_str(&format!("Bearer {value}")).expect("header-safe token");
            assert!(token.expires_in.is_none_or(|s| s > 0));
            let unix = 1_800_000_000;
            for subject_exp in [None, Some(unix + 5), Some(i64::MIN), Some(i64::MAX)] {
                let l = token_lifetime(token.expires_in, jwt::expiry(value), subject_exp, unix);
                assert!(l.refresh_after <= l.expires_after);
                assert!(now.checked_add(l.expires_after).is_some(), "instant overflow");
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains(SECRET) && !text.contains(SUBJECT), "echoed secret");
            assert!(!e.category().is_empty());
            if (200..300).contains(&status) {
                assert_eq!(e.category(), "malformed");
            }
        }
    }
    if let Ok(value) = http::HeaderValue::from_bytes(body) {
        if let Some(wait) = parse_retry_after(&value, SystemTime::now()) {
            assert!(wait <= Duration::from_secs(600));
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = jwt::expiry(text);
    }
});
