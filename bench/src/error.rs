//! The benchmark's one error type.

/// Why a benchmark step could not run or produced nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file, socket or child-process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A fake, a proxy or a load tool did not start or become ready.
    #[error("setup: {0}")]
    Setup(String),
    /// A load tool's output could not be understood.
    #[error("tool output: {0}")]
    Tool(String),
    /// An HTTP exchange with a system under test failed.
    #[error("http: {0}")]
    Http(String),
    /// A sanity check failed: the figures would not mean what they say.
    #[error("check: {0}")]
    Check(String),
}

impl BenchError {
    /// Low-cardinality label.
    pub fn category(&self) -> &'static str {
        match self {
            BenchError::Io { .. } => "io",
            BenchError::Setup(_) => "setup",
            BenchError::Tool(_) => "tool",
            BenchError::Http(_) => "http",
            BenchError::Check(_) => "check",
        }
    }

    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    /// A setup failure from a testkit helper (which reports with `anyhow`).
    pub fn setup(what: &str, error: impl std::fmt::Display) -> Self {
        BenchError::Setup(format!("{what}: {error:#}"))
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
