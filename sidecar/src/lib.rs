//! Civic MCP sidecar: a localhost proxy that gives a workload authenticated access to the Civic
//! MCP hub. The workload calls `http://127.0.0.1:8931/hub/mcp` with no credentials; the sidecar
//! exchanges the workload's identity for a profile-locked Civic token (RFC 8693) and forwards
//! the request with it.
//!
//! # Used by the operator
//!
//! - [`contract`]: environment variable names, ports and defaults the operator injects.
//! - [`tls::client_config`]: the one rustls (ring) client configuration.
//! - [`exchange::ExchangeClient`]: the token-exchange client, with
//!   [`probe_credentials`](exchange::ExchangeClient::probe_credentials) to tell good client
//!   credentials from bad ones without a subject token.
//!
//! ```no_run
//! # async fn probe() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use civic_sidecar::exchange::{ClientCredentials, CredentialVerdict, ExchangeClient};
//! use civic_sidecar::secret::Secret;
//!
//! let tls = civic_sidecar::tls::client_config(None)?;
//! let client = ExchangeClient::new(
//!     civic_sidecar::contract::DEFAULT_TOKEN_URL.parse()?,
//!     tls,
//!     Duration::from_secs(10),
//! )?;
//! let credentials = ClientCredentials {
//!     client_id: "my-client".into(),
//!     client_secret: Secret::new("from-the-secret"),
//! };
//! match client.probe_credentials(&credentials).await? {
//!     CredentialVerdict::Valid => println!("credentials accepted"),
//!     CredentialVerdict::Invalid { code, .. } => println!("rejected: {code}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # The sidecar itself
//!
//! [`config::Config`] (flags and `CIVIC_*` variables) → [`server::Server::bind`] →
//! [`server::Server::run`]. Inside: [`token::TokenSource`] gives each request its token (static
//! file, or exchanged through the [`cache::TokenCache`] for a subject from a [`subject`] file or
//! header); [`proxy::Proxy`] checks and rewrites requests ([`guard`], [`headers`]) and relays
//! them over the hub connection pool all workload connections share ([`upstream::pool`]),
//! answering CORS for browser pages on allowed origins ([`cors`]); [`admin`] serves
//! `/livez`, `/readyz` and `/metrics` ([`metrics`]).
#![warn(missing_docs)]

pub mod admin;
pub mod backoff;
pub mod body;
pub mod cache;
pub mod config;
pub mod contract;
pub mod cors;
pub mod error;
pub mod exchange;
pub mod guard;
pub mod halfclose;
pub mod headers;
pub mod jwt;
pub mod listen;
pub mod metrics;
pub mod profiles;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod subject;
pub mod tls;
pub mod token;
pub mod upstream;
