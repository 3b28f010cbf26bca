//! Civic MCP operator library: the `CivicIntegration` CRD, its controller, the credential probe,
//! leader election, metrics and the admin endpoints. `main.rs` only parses arguments.

pub mod admin;
pub mod annotations;
pub mod certs;
pub mod check;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod error;
pub mod inject;
pub mod issuer;
pub mod leader;
pub mod metrics;
pub mod pods;
pub mod policy;
pub mod probe;
pub mod status;
pub mod telemetry;
pub mod validation;
pub mod watch;
pub mod webhook;

#[cfg(test)]
mod testing;
