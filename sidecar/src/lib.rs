//! Civic MCP sidecar library.
