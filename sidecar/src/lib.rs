//! Civic MCP sidecar library.

pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod contract;
pub mod error;
pub mod exchange;
pub mod guard;
pub mod headers;
pub mod jwt;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod subject;
pub mod tls;
pub mod token;
pub mod upstream;
