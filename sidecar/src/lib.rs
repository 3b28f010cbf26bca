//! Civic MCP sidecar library.

pub mod contract;
