//! The configuration parser over an environment map (the operator ↔ sidecar contract): every
//! `CIVIC_*` value is fuzzed except the file paths, which point at fixed files (the parser reads
//! the CA file). Never panics; an error is one line naming a setting; an accepted configuration
//! keeps the proxy on loopback and the exchange timeout within 15 s.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use civic_sidecar::config::{Config, ConfigError};
use civic_sidecar::contract as c;
use libfuzzer_sys::fuzz_target;

/// Settings whose values come from the input, in the order input lines fill them.
const FUZZED: [&str; 21] = [
    c::ENV_LISTEN_ADDR,
    c::ENV_ADMIN_ADDR,
    c::ENV_HUB_URL,
    c::ENV_TOKEN_URL,
    c::ENV_CLIENT_ID,
    c::ENV_PROFILE_ID,
    c::ENV_PROFILE_LOCK,
    c::ENV_SUBJECT_HEADER,
    c::ENV_SUBJECT_TOKEN_TYPE,
    c::ENV_TOKEN_TTL_SECONDS,
    c::ENV_SCOPE,
    c::ENV_PROFILE_HEADER,
    c::ENV_MAX_BODY_BYTES,
    c::ENV_ALLOWED_ORIGINS,
    c::ENV_SHUTDOWN_GRACE_SECONDS,
    c::ENV_EXCHANGE_TIMEOUT_SECONDS,
    c::ENV_MAX_CACHED_SUBJECTS,
    c::ENV_WORKER_THREADS,
    c::ENV_LOG,
    c::ENV_LOG_FORMAT,
    c::ENV_HUB_PROTOCOL,
];

/// A directory with a client secret, a subject token and a static token file.
fn files() -> &'static (String, String, String) {
    static FILES: OnceLock<(String, String, String)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("civic-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, value: &str| {
            let p = dir.join(name);
            std::fs::write(&p, value).expect("write");
            p.to_string_lossy().into_owned()
        };
        (
            write("client-secret", "fuzz-secret"),
            write("subject-token", "fuzz-subject"),
            write("access-token", "fuzz-access"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (secret, subject, access) = files();
    let mut env: HashMap<String, String> = HashMap::new();
    let mut lines = text.split('\n');
    // First line: which subject mode files are set (bit 0 subject file, bit 1 static file,
    // bit 2 secret file).
    let modes = lines.next().and_then(|l| l.bytes().next()).unwrap_or(0);
    if modes & 1 != 0 {
        env.insert(c::ENV_SUBJECT_TOKEN_FILE.into(), subject.clone());
    }
    if modes & 2 != 0 {
        env.insert(c::ENV_ACCESS_TOKEN_FILE.into(), access.clone());
    }
    if modes & 4 != 0 {
        env.insert(c::ENV_CLIENT_SECRET_FILE.into(), secret.clone());
    }
    for (name, value) in FUZZED.iter().zip(lines) {
        if !value.is_empty() {
            env.insert((*name).into(), value.into());
        }
    }
    match Config::parse(["civic-sidecar"], &env) {
        Ok(config) => {
            assert!(config.listen_addr.ip().is_loopback(), "proxy off loopback");
            assert!(config.exchange_timeout <= Duration::from_secs(15));
            assert!(config.max_cached_subjects >= 1);
            let _ = format!("{config:?}");
        }
        Err(ConfigError::Info(_)) => panic!("no help was asked for"),
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "more than one line: {line:?}");
            assert!(!e.category().is_empty());
        }
    }
});
