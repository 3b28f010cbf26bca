//! Shared test fakes for the civic-mcp workspace.
//!
//! - [`auth::FakeCivicAuth`]: RFC 8693 token endpoint with scriptable faults.
//! - [`hub::FakeHub`]: recording MCP upstream with scriptable JSON/SSE/gzip replies.
//! - [`process::SidecarProcess`]: the real sidecar binary, with a secret scan of its output.
//! - [`client`]: exact-header HTTP/1.1 clients, an SSE reader and a raw TCP client.
//! - [`relay::DelayRelay`]: a TCP relay adding a fixed delay each way (a hub across a WAN).
//! - [`capture`]: final `/metrics` and cluster state (Events, statuses, Pods) into the log dir.
//! - [`jwt`], [`secrets`], [`tls`], [`fs`]: tokens, recognisable secrets, a test CA, temp dirs.

pub mod apiserver;
pub mod auth;
pub mod capture;
pub mod client;
pub mod fs;
pub mod hub;
pub mod jwt;
pub mod process;
pub mod relay;
pub mod secrets;
pub mod server;
pub mod tls;

pub use auth::{AuthReply, ExchangeRequest, FakeCivicAuth};
pub use hub::{FakeHub, HubReply, RecordedRequest, SseStep};
pub use process::{Readiness, SidecarBuilder, SidecarProcess};
pub use relay::DelayRelay;
pub use tls::TestCa;
