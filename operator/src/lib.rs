//! Civic MCP operator library.
