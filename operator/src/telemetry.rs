//! Logging setup: `tracing` to stderr, text or JSON, filtered by an `EnvFilter` expression.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The filter expression does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter {filter:?}: {reason}")]
pub struct InvalidFilter {
    filter: String,
    reason: String,
}

/// Installs the global subscriber. Called once, from `main`.
pub fn init(filter: &str, format: LogFormat) -> Result<(), InvalidFilter> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| InvalidFilter {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        // Colour only for people: log collectors and tests parse plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
