//! Operator-level policy: where integrations may send credentials and which images may run as
//! their sidecar.
//!
//! Whoever can edit a CivicIntegration chooses its `tokenUrl` (which receives the client secret
//! and every injected pod's service-account token), its `hubUrl` (which receives every Civic
//! token), the service-account token audience and the sidecar image. Without a policy, that
//! person could send a token the cluster itself accepts to any host, or run any image with the
//! namespace's credentials. The cluster admin who installs the chart sets the policy; validation
//! (status `InvalidSpec`), the webhook (denied pods) and the credential probe all apply it.

use std::collections::BTreeSet;

use url::Url;

use crate::inject::DEFAULT_SIDECAR_IMAGE;

/// Audiences the apiservers of common distributions accept by default (kubeadm and kind, EKS,
/// the in-cluster names): a projected token for one of them is an API credential.
pub const DEFAULT_REFUSED_AUDIENCES: &[&str] = &[
    "https://kubernetes.default.svc",
    "https://kubernetes.default.svc.cluster.local",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// The policy's flags, shared by `run` and `inject` (the chart's `policy.*` values). Each entry
/// is checked as it is parsed, so a bad one stops the operator at start with its flag named.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyArgs {
    /// Hosts an integration's `tokenUrl` may name, comma-separated: `host`, `host:port` (that
    /// port only) or `*.domain` (its subdomains). The client secret and the pods' subject tokens
    /// are sent there.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_ALLOWED_TOKEN_HOSTS",
        value_delimiter = ',',
        default_value = "auth.civic.com",
        value_parser = HostRule::parse
    )]
    pub allowed_token_hosts: Vec<HostRule>,

    /// Hosts an integration's `hubUrl` may name (same forms); Civic tokens are sent there.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_ALLOWED_HUB_HOSTS",
        value_delimiter = ',',
        default_value = "app.civic.com",
        value_parser = HostRule::parse
    )]
    pub allowed_hub_hosts: Vec<HostRule>,

    /// Image prefixes `spec.sidecar.image` may use, comma-separated; a prefix matches up to a
    /// `/`, `:` or `@` (so `ghcr.io/civic-mcp/civic-sidecar` allows its tags and digests, not
    /// `ghcr.io/civic-mcp/civic-sidecar-x`). Empty: the repository of `--sidecar-image`.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_ALLOWED_SIDECAR_IMAGES",
        value_delimiter = ',',
        value_parser = image_prefix
    )]
    pub allowed_sidecar_images: Vec<String>,

    /// Service-account token audiences a binding may not request because the apiserver accepts
    /// tokens for them (its `--api-audiences`). The service-account issuer the apiserver
    /// publishes is refused as well, read at start.
    #[arg(
        long,
        env = "CIVIC_OPERATOR_REFUSED_AUDIENCES",
        value_delimiter = ',',
        default_values = DEFAULT_REFUSED_AUDIENCES
    )]
    pub refused_audiences: Vec<String>,
}

fn image_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        Err(format!("{s:?} is not an image prefix"))
    } else {
        Ok(s.to_owned())
    }
}

/// One allowed host: exact, or every subdomain of a domain; any port unless one is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    host: String,
    subdomains: bool,
    port: Option<u16>,
}

impl HostRule {
    /// `host`, `host:port` or `*.domain`.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let bad = || format!("{entry:?} is not a host, host:port or *.domain");
        let (subdomains, rest) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        if rest.is_empty() || rest.ends_with(':') || rest.contains(['/', '@', '?', '#', '*']) {
            return Err(bad());
        }
        // The URL parser normalizes the host as it will normalize the spec's URLs.
        let url = Url::parse(&format!("https://{rest}/")).map_err(|_| bad())?;
        let host = url.host_str().ok_or_else(bad)?.to_owned();
        let has_port = rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.ends_with(']'));
        let port = if has_port {
            Some(url.port_or_known_default().ok_or_else(bad)?)
        } else {
            None
        };
        Ok(Self {
            host,
            subdomains,
            port,
        })
    }

    fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host_ok = if self.subdomains {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|label| label.len() > 1 && label.ends_with('.'))
        } else {
            host == self.host
        };
        host_ok
            && self
                .port
                .is_none_or(|p| url.port_or_known_default() == Some(p))
    }

    fn describe(&self) -> String {
        let mut s = if self.subdomains {
            format!("*.{}", self.host)
        } else {
            self.host.clone()
        };
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }
}

/// The operator's policy, checked against every CivicIntegration spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    token_hosts: Vec<HostRule>,
    hub_hosts: Vec<HostRule>,
    images: Vec<String>,
    refused_audiences: BTreeSet<String>,
}

impl Default for Policy {
    /// The chart's defaults: Civic's hosts, the default sidecar image's repository.
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            policy: PolicyArgs,
        }
        let args = Defaults::try_parse_from(["defaults"])
            .expect("the flags' defaults parse")
            .policy;
        Policy::new(&args, DEFAULT_SIDECAR_IMAGE)
    }
}

/// The repository part of an image reference (no tag, no digest).
pub fn image_repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(repo, _)| repo);
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

impl Policy {
    /// The policy from its flags; `default_image` is the sidecar image injected when a spec names
    /// none (its repository is allowed when no image prefix is given).
    pub fn new(args: &PolicyArgs, default_image: &str) -> Self {
        let mut images = args.allowed_sidecar_images.clone();
        if images.is_empty() {
            images.push(image_repository(default_image).to_owned());
        }
        Self {
            token_hosts: args.allowed_token_hosts.clone(),
            hub_hosts: args.allowed_hub_hosts.clone(),
            images,
            refused_audiences: args
                .refused_audiences
                .iter()
                .map(|a| normalize_audience(a))
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Also refuses `audience` (the apiserver's service-account issuer).
    pub fn refuse_audience(&mut self, audience: &str) {
        self.refused_audiences
            .insert(normalize_audience(audience).to_owned());
    }

    /// `Err` says why `url` may not receive credentials as a token URL.
    pub fn token_url(&self, url: &Url) -> Result<(), String> {
        host_allowed(&self.token_hosts, url, "token", "policy.allowedTokenHosts")
    }

    /// `Err` says why `url` may not receive Civic tokens as the hub.
    pub fn hub_url(&self, url: &Url) -> Result<(), String> {
        host_allowed(&self.hub_hosts, url, "hub", "policy.allowedHubHosts")
    }

    /// `Err` says why `image` may not run as a sidecar.
    pub fn sidecar_image(&self, image: &str) -> Result<(), String> {
        let allowed = self.images.iter().any(|prefix| {
            image.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                rest.is_empty()
                    || prefix.ends_with(['/', ':', '@'])
                    || rest.starts_with([':', '@', '/'])
            })
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "image {image:?} is not allowed by the operator's policy (chart value \
                 policy.allowedSidecarImages: {})",
                self.images.join(", ")
            ))
        }
    }

    /// `Err` says why a service-account token for `audience` must not be minted.
    pub fn audience(&self, audience: &str) -> Result<(), String> {
        if self
            .refused_audiences
            .contains(normalize_audience(audience))
        {
            Err(format!(
                "{audience:?} is an audience the Kubernetes API server accepts, so its token \
                 would be an API credential sent to Civic; use an audience of your own, such \
                 as \"civic\" (chart value policy.refusedAudiences)"
            ))
        } else {
            Ok(())
        }
    }
}

fn normalize_audience(audience: &str) -> &str {
    audience.trim().trim_end_matches('/')
}

fn host_allowed(rules: &[HostRule], url: &Url, what: &str, value: &str) -> Result<(), String> {
    if rules.iter().any(|r| r.allows(url)) {
        return Ok(());
    }
    let allowed: Vec<String> = rules.iter().map(HostRule::describe).collect();
    Err(format!(
        "{what} host {:?} is not allowed by the operator's policy (chart value {value}: {})",
        url.host_str().unwrap_or_default(),
        if allowed.is_empty() {
            "none".to_owned()
        } else {
            allowed.join(", ")
        }
    ))
}

/// The service-account issuer the apiserver publishes (OIDC discovery), which it also accepts
/// as an audience unless `--api-audiences` says otherwise. `None` when discovery is not
/// served or not readable; a few retries ride out an apiserver that is still starting.
pub async fn discover_issuer(client: &kube::Client) -> Option<String> {
    match crate::issuer::discover(client, 4).await {
        Ok(d) => Some(d.issuer),
        Err(crate::issuer::DiscoveryError::Refused { code, .. }) => {
            tracing::warn!(
                code,
                "the service-account issuer is not readable \
                (OIDC discovery); only --refused-audiences are refused"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the service-account issuer failed; \
                only --refused-audiences are refused");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(l: &[&str]) -> Vec<HostRule> {
        l.iter().map(|h| HostRule::parse(h).unwrap()).collect()
    }

    fn policy(tokens: &[&str], hubs: &[&str], images: &[&str]) -> Policy {
        Policy::new(
            &PolicyArgs {
                allowed_token_hosts: rules(tokens),
                allowed_hub_hosts: rules(hubs),
                allowed_sidecar_images: images.iter().map(|s| s.to_string()).collect(),
                refused_audiences: vec!["https://kubernetes.default.svc".into()],
            },
            "ghcr.io/civic-mcp/civic-sidecar:0.1.0",
        )
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn defaults_allow_civic_only() {
        let p = Policy::default();
        assert!(
            p.token_url(&url("https://auth.civic.com/oauth/token"))
                .is_ok()
        );
        assert!(p.token_url(&url("https://AUTH.civic.com:8443/x")).is_ok());
        assert!(p.hub_url(&url("https://app.civic.com/hub/mcp")).is_ok());
        for bad in [
            "https://evil.example/oauth/token",
            "https://auth.civic.com.evil.example/",
            "https://xauth.civic.com/",
            "https://app.civic.com/",
            "https://127.0.0.1/",
        ] {
            let err = p.token_url(&url(bad)).unwrap_err();
            assert!(
                err.contains("policy.allowedTokenHosts: auth.civic.com"),
                "{err}"
            );
        }
        assert!(p.hub_url(&url("https://auth.civic.com/")).is_err());
        let image = image_repository(DEFAULT_SIDECAR_IMAGE);
        assert!(p.sidecar_image(&format!("{image}:9.9.9")).is_ok());
        assert!(p.sidecar_image(&format!("{image}-evil:1")).is_err());
        assert!(p.sidecar_image("docker.io/attacker/sidecar:1").is_err());
        for aud in DEFAULT_REFUSED_AUDIENCES {
            assert!(p.audience(aud).is_err(), "{aud}");
            assert!(p.audience(&format!("{aud}/")).is_err(), "{aud}/");
        }
        assert!(p.audience("civic").is_ok());
    }

    #[test]
    fn host_rules_match_exactly_by_subdomain_or_port() {
        let p = policy(
            &["*.auth.example.com", "localhost:8443", "[::1]", "127.0.0.1"],
            &["hub.example.com"],
            &[],
        );
        assert!(p.token_url(&url("https://eu.auth.example.com/t")).is_ok());
        assert!(p.token_url(&url("https://a.b.auth.example.com/t")).is_ok());
        assert!(p.token_url(&url("https://auth.example.com/t")).is_err());
        assert!(p.token_url(&url("https://evilauth.example.com/t")).is_err());
        assert!(p.token_url(&url("https://localhost:8443/t")).is_ok());
        assert!(p.token_url(&url("https://localhost:9443/t")).is_err());
        assert!(p.token_url(&url("https://localhost/t")).is_err());
        assert!(p.token_url(&url("https://[::1]:1234/t")).is_ok());
        assert!(p.token_url(&url("http://127.0.0.1:1/t")).is_ok());
        assert!(
            p.hub_url(&url("https://hub.example.com:443/hub/mcp"))
                .is_ok()
        );
    }

    #[test]
    fn bad_entries_are_refused_by_the_flag_parser() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            policy: PolicyArgs,
        }
        for bad in [
            "https://auth.civic.com",
            "a/b",
            "*.",
            "host:",
            "*",
            "a@b",
            "x:99999",
        ] {
            let err = Cli::try_parse_from(["x", "--allowed-token-hosts", bad])
                .err()
                .unwrap_or_else(|| panic!("{bad} parsed"));
            assert!(
                err.to_string().contains("--allowed-token-hosts"),
                "{bad}: {err}"
            );
        }
        let ok = Cli::try_parse_from(["x", "--allowed-hub-hosts", "a.example,*.b.example:8443"])
            .unwrap();
        assert_eq!(ok.policy.allowed_hub_hosts.len(), 2);
        assert!(Cli::try_parse_from(["x", "--allowed-sidecar-images", "a b"]).is_err());
        let p = policy(&[], &[], &[]);
        let err = p.token_url(&url("https://auth.civic.com/")).unwrap_err();
        assert!(err.contains("none"), "{err}");
    }

    #[test]
    fn image_prefixes_match_at_a_boundary() {
        let p = policy(
            &[],
            &[],
            &[
                "registry.example.com/civic/",
                "ghcr.io/civic-mcp/civic-sidecar",
            ],
        );
        assert!(
            p.sidecar_image("registry.example.com/civic/sidecar:1")
                .is_ok()
        );
        assert!(
            p.sidecar_image("registry.example.com/civic-x/sidecar:1")
                .is_err()
        );
        assert!(
            p.sidecar_image("ghcr.io/civic-mcp/civic-sidecar@sha256:abc")
                .is_ok()
        );
        assert!(p.sidecar_image("ghcr.io/civic-mcp/civic-sidecar").is_ok());
        assert!(
            p.sidecar_image("ghcr.io/civic-mcp/civic-sidecarx:1")
                .is_err()
        );
        assert_eq!(image_repository("reg:5000/a/b:1.2"), "reg:5000/a/b");
        assert_eq!(image_repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(image_repository("a/b@sha256:00"), "a/b");
        let mut p = policy(&[], &[], &[]);
        assert!(p.audience("https://issuer.example/").is_ok());
        p.refuse_audience("https://issuer.example");
        assert!(p.audience("https://issuer.example/").is_err());
    }
}
