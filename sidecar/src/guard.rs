//! The DNS-rebinding guard of the proxy listener (docs/protocol.md statements 4 and 5): a request
//! must name a loopback `Host`, and an `Origin`, when present, must be on the allow-list.

use std::net::{IpAddr, Ipv6Addr};

/// Which browser origins may call the proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Any origin whose host is loopback (`localhost`, `127.0.0.0/8`, `[::1]`), any scheme/port.
    pub loopback: bool,
    /// Any origin at all (`*`).
    pub any: bool,
    /// Exact origins, normalized as `scheme://host[:port]` (lowercase, default port omitted), or
    /// the literal `null`.
    pub exact: Vec<String>,
}

impl OriginPolicy {
    /// Parses a comma-separated list: `loopback`, `*`, `null`, or origins like
    /// `https://app.example:8443`. An empty list allows no origin at all.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut policy = OriginPolicy::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry {
                "loopback" => policy.loopback = true,
                "*" => policy.any = true,
                "null" => policy.exact.push("null".into()),
                _ => {
                    policy.exact.push(normalize_origin(entry).ok_or_else(|| {
                        format!("`{entry}` is not an origin (scheme://host[:port])")
                    })?)
                }
            }
        }
        Ok(policy)
    }

    /// Whether a request carrying this `Origin` header value may pass.
    pub fn allows(&self, origin: &[u8]) -> bool {
        if self.any {
            return true;
        }
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.trim();
        if origin == "null" {
            return self.exact.iter().any(|e| e == "null");
        }
        let Some(normalized) = normalize_origin(origin) else {
            return false;
        };
        if self.exact.contains(&normalized) {
            return true;
        }
        self.loopback
            && url::Url::parse(&normalized)
                .ok()
                .and_then(|u| u.host().map(|h| is_loopback_host(&h)))
                .unwrap_or(false)
    }
}

/// `scheme://host[:port]` of an http(s) origin, or `None` if it has a path, query, userinfo…
fn normalize_origin(text: &str) -> Option<String> {
    let url = url::Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return None;
    }
    Some(match url.port() {
        Some(port) => format!("{}://{}:{}", url.scheme(), url.host_str()?, port),
        None => format!("{}://{}", url.scheme(), url.host_str()?),
    })
}

/// Whether a `Host` header value (authority, optional port) names a loopback address.
pub fn is_loopback_authority(authority: &[u8]) -> bool {
    let Ok(authority) = std::str::from_utf8(authority) else {
        return false;
    };
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty() || valid_port(after.strip_prefix(':'))) {
            return false;
        }
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if valid_port(Some(port)) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case("localhost.")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_port(port: Option<&str>) -> bool {
    port.is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a URL host is loopback (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_pass() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8931",
            "localhost",
            "LOCALHOST:80",
            "[::1]",
            "[::1]:8931",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback_authority(ok.as_bytes()), "{ok}");
        }
    }

    #[test]
    fn other_hosts_fail() {
        for bad in [
            "evil.example",
            "evil.example:8931",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:8931",
            "0.0.0.0:8931",
            "[::2]:80",
            "[::1",
            "127.0.0.1:",
            "127.0.0.1:abc",
            "",
            "[::1]x",
        ] {
            assert!(!is_loopback_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn default_policy_allows_only_loopback_origins() {
        let p = OriginPolicy::parse("loopback").unwrap();
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:8443",
        ] {
            assert!(p.allows(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "null",
            "https://localhost.evil.example",
            "garbage",
            "http://127.0.0.1/path",
        ] {
            assert!(!p.allows(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn explicit_origins() {
        let p = OriginPolicy::parse("https://app.example:8443, HTTP://Other.Example").unwrap();
        assert!(p.allows(b"https://app.example:8443"));
        assert!(p.allows(b"http://other.example"));
        assert!(p.allows(b"http://other.example:80"));
        assert!(!p.allows(b"https://app.example"));
        assert!(!p.allows(b"http://localhost"));
        assert!(OriginPolicy::parse("*").unwrap().allows(b"http://anything"));
        assert!(OriginPolicy::parse("null").unwrap().allows(b"null"));
        assert!(!OriginPolicy::parse("").unwrap().allows(b"http://localhost"));
        assert!(OriginPolicy::parse("https://a.example/path").is_err());
        assert!(OriginPolicy::parse("ftp://a.example").is_err());
        assert!(OriginPolicy::parse("not an origin").is_err());
    }
}
