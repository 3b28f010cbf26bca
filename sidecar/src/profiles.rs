//! The profiles one sidecar serves, and the path of each: the default profile on `/hub/mcp`,
//! each named profile on `/profiles/<name>/hub/mcp`. Every profile has its own token (its own
//! cache entry, refresh and single flight) for the same subject, so two toolkits in one pod stay
//! separately locked.
//!
//! The operator renders the list into [`ENV_PROFILES`](crate::contract::ENV_PROFILES) with
//! [`render`]; the sidecar reads it back with [`parse`]. Names are the only thing a workload can
//! choose, and it can choose only among these: any other path is a 404.

use http::HeaderValue;
use uuid::Uuid;

use crate::contract::MCP_PATH;

/// Most named profiles one binding (and so one sidecar) may list.
pub const MAX_NAMED_PROFILES: usize = 8;
/// Longest profile name.
pub const MAX_NAME_LEN: usize = 32;
/// The `profile` metric label (and readiness name) of the profile served on `/hub/mcp`; no
/// named profile may take it.
pub const DEFAULT_NAME: &str = "default";
/// Path prefix of the named profiles.
pub const PROFILES_PREFIX: &str = "/profiles/";

/// An extra profile a binding lists by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedProfile {
    /// DNS-label-like name (lowercase letters, digits, `-`), unique in the list.
    pub name: String,
    /// The profile (toolkit) UUID.
    pub id: Uuid,
}

/// Why a profile name is refused, or `None` when it is valid.
pub fn name_problem(name: &str) -> Option<&'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Some("must be 1-32 characters");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        || bytes[0] == b'-'
        || bytes[bytes.len() - 1] == b'-'
    {
        return Some("must be lowercase letters, digits and '-', starting and ending alphanumeric");
    }
    if name == DEFAULT_NAME {
        return Some("\"default\" is reserved for the profile served on /hub/mcp");
    }
    None
}

/// The path a workload calls for the named profile `name`.
pub fn path(name: &str) -> String {
    format!("{PROFILES_PREFIX}{name}{MCP_PATH}")
}

/// The environment variable holding the URL of the named profile `name` in app containers:
/// `CIVIC_MCP_URL_<NAME>`, with `-` as `_` (names have no `_`, so no two names collide).
pub fn url_env(name: &str) -> String {
    let mut env =
        String::with_capacity(crate::contract::WORKLOAD_MCP_URL_ENV.len() + 1 + name.len());
    env.push_str(crate::contract::WORKLOAD_MCP_URL_ENV);
    env.push('_');
    env.extend(name.chars().map(|c| {
        if c == '-' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    env
}

/// The URL a workload in an injected pod calls for the named profile `name`.
pub fn workload_url(port: u16, name: &str) -> String {
    format!("http://127.0.0.1:{port}{}", path(name))
}

/// The [`ENV_PROFILES`](crate::contract::ENV_PROFILES) value for `(name, profile id)` pairs:
/// `name=uuid` separated by commas.
pub fn render<'a>(profiles: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    profiles
        .into_iter()
        .map(|(name, id)| format!("{name}={id}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The names in a [`render`]ed list, without checking it (the operator reads back what it
/// rendered into an injected sidecar).
pub fn names(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .filter_map(|entry| entry.split_once('='))
        .map(|(name, _)| name.trim())
        .filter(|name| !name.is_empty())
}

/// Parses a [`render`]ed list; the error says which entry is wrong and why.
pub fn parse(value: &str) -> Result<Vec<NamedProfile>, String> {
    let mut profiles: Vec<NamedProfile> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, id)) = entry.split_once('=') else {
            return Err(format!("entry {entry:?} is not name=uuid"));
        };
        let name = name.trim();
        if let Some(problem) = name_problem(name) {
            return Err(format!("profile name {name:?} {problem}"));
        }
        let id = Uuid::parse_str(id.trim())
            .map_err(|_| format!("profile {name:?}: {:?} is not a UUID", id.trim()))?;
        if profiles.iter().any(|p| p.name == name) {
            return Err(format!("profile name {name:?} appears twice"));
        }
        profiles.push(NamedProfile {
            name: name.to_string(),
            id,
        });
    }
    if profiles.len() > MAX_NAMED_PROFILES {
        return Err(format!(
            "{} named profiles; at most {MAX_NAMED_PROFILES}",
            profiles.len()
        ));
    }
    Ok(profiles)
}

/// Which served profile a request is for: an index into [`Routes`], 0 being the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteId(usize);

impl RouteId {
    /// The profile served on `/hub/mcp`.
    pub const DEFAULT: RouteId = RouteId(0);

    /// Position in [`Routes::iter`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// One served profile.
#[derive(Clone, Debug)]
pub struct Route {
    /// [`DEFAULT_NAME`] or the profile's name: its metric label.
    pub name: String,
    /// The UUID sent as `civic_profile` and in the profile header; `None` for a default route
    /// with no profile configured.
    pub profile: Option<Uuid>,
    /// `profile` as a header value.
    pub header_value: Option<HeaderValue>,
}

/// A path that names no served profile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unrouted {
    /// Neither `/hub/mcp` nor under [`PROFILES_PREFIX`].
    #[error("not found: only {MCP_PATH} and {PROFILES_PREFIX}<name>{MCP_PATH} are proxied")]
    NotFound,
    /// Under [`PROFILES_PREFIX`], with a name this sidecar does not serve.
    #[error("no profile named {name:?} here; the profiles served are: {known}")]
    UnknownProfile {
        /// The name asked for (at most [`MAX_NAME_LEN`] characters of it).
        name: String,
        /// The names served, comma-separated (or "none").
        known: String,
    },
}

/// Every profile the sidecar serves, the default first.
#[derive(Clone, Debug)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The default route (profile `default`, possibly none) and one per named profile.
    pub fn new(default: Option<Uuid>, named: &[NamedProfile]) -> Self {
        let route = |name: &str, profile: Option<Uuid>| Route {
            name: name.to_string(),
            profile,
            header_value: profile.map(|p| {
                HeaderValue::from_str(&p.hyphenated().to_string())
                    .expect("a UUID is a header value")
            }),
        };
        let mut routes = vec![route(DEFAULT_NAME, default)];
        routes.extend(named.iter().map(|p| route(&p.name, Some(p.id))));
        Self { routes }
    }

    /// The route `path` (without query) is for. Exact matches only: no trailing slash, no
    /// percent-decoding, no dot segments, so a path can never reach another profile.
    pub fn resolve(&self, path: &str) -> Result<RouteId, Unrouted> {
        if path == MCP_PATH {
            return Ok(RouteId::DEFAULT);
        }
        let Some(name) = path
            .strip_prefix(PROFILES_PREFIX)
            .and_then(|rest| rest.strip_suffix(MCP_PATH))
        else {
            return Err(Unrouted::NotFound);
        };
        match self.routes.iter().skip(1).position(|r| r.name == name) {
            Some(index) => Ok(RouteId(index + 1)),
            None if name.contains('/') => Err(Unrouted::NotFound),
            None => Err(Unrouted::UnknownProfile {
                name: name.chars().take(MAX_NAME_LEN).collect(),
                known: self.known_names(),
            }),
        }
    }

    /// The route with this id.
    pub fn get(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }

    /// Every route with its id, the default first.
    pub fn iter(&self) -> impl Iterator<Item = (RouteId, &Route)> {
        self.routes.iter().enumerate().map(|(i, r)| (RouteId(i), r))
    }

    /// How many profiles are served (1 + named).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Never true: the default route always exists.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn known_names(&self) -> String {
        let names: Vec<&str> = self.routes[1..].iter().map(|r| r.name.as_str()).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "11111111-1111-4111-8111-111111111111";
    const B: &str = "22222222-2222-4222-8222-222222222222";

    fn routes() -> Routes {
        let named = parse(&format!("support={A}, billing-tools={B}")).unwrap();
        Routes::new(None, &named)
    }

    #[test]
    fn render_and_parse_round_trip() {
        let named = parse(&format!("support={A},billing-tools={B}")).unwrap();
        assert_eq!(named.len(), 2);
        let ids: Vec<String> = named.iter().map(|p| p.id.to_string()).collect();
        let rendered = render(
            named
                .iter()
                .zip(&ids)
                .map(|(p, id)| (p.name.as_str(), id.as_str())),
        );
        assert_eq!(parse(&rendered).unwrap(), named);
        assert_eq!(
            names(&rendered).collect::<Vec<_>>(),
            ["support", "billing-tools"]
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn parse_names_each_bad_entry() {
        for (value, needle) in [
            ("support", "not name=uuid"),
            (&format!("Support={A}") as &str, "lowercase"),
            (&format!("-x={A}"), "lowercase"),
            (&format!("default={A}"), "reserved"),
            (&format!("{}={A}", "a".repeat(33)), "1-32"),
            ("support=nope", "not a UUID"),
            (&format!("a={A},a={B}"), "twice"),
        ] {
            let error = parse(value).unwrap_err();
            assert!(error.contains(needle), "{value}: {error}");
        }
        let nine: Vec<String> = (0..9).map(|i| format!("p{i}={A}")).collect();
        assert!(parse(&nine.join(",")).unwrap_err().contains("at most 8"));
    }

    #[test]
    fn url_env_is_upper_snake() {
        assert_eq!(url_env("billing-tools"), "CIVIC_MCP_URL_BILLING_TOOLS");
        assert_eq!(path("support"), "/profiles/support/hub/mcp");
        assert_eq!(
            workload_url(8931, "support"),
            "http://127.0.0.1:8931/profiles/support/hub/mcp"
        );
    }

    #[test]
    fn resolves_exact_paths_only() {
        let r = routes();
        assert_eq!(r.resolve("/hub/mcp"), Ok(RouteId::DEFAULT));
        let support = r.resolve("/profiles/support/hub/mcp").unwrap();
        assert_eq!(r.get(support).name, "support");
        assert_eq!(r.get(support).profile.unwrap().to_string(), A);
        let billing = r.resolve("/profiles/billing-tools/hub/mcp").unwrap();
        assert_eq!(r.get(billing).profile.unwrap().to_string(), B);
        for path in [
            "/hub/mcp/",
            "/profiles/support/hub/mcp/",
            "/profiles/support/../billing-tools/hub/mcp",
            "/profiles/support%2F..%2Fbilling-tools/hub/mcp",
            "/profiles//hub/mcp",
            "/profiles/default/hub/mcp",
            "/profiles/SUPPORT/hub/mcp",
            "/profiles/support",
            "/profiles/support/hub/mcpx",
            "//hub/mcp",
        ] {
            assert!(r.resolve(path).is_err(), "{path} resolved");
        }
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let error = routes().resolve("/profiles/sales/hub/mcp").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no profile named \"sales\" here; the profiles served are: support, billing-tools"
        );
        let none = Routes::new(None, &[]).resolve("/profiles/sales/hub/mcp");
        assert!(none.unwrap_err().to_string().ends_with("served are: none"));
        assert_eq!(
            routes().resolve("/elsewhere").unwrap_err(),
            Unrouted::NotFound
        );
    }
}
