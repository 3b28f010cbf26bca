//! Closed-loop throughput with Debian's `wrk`, POSTing the small JSON-RPC body (Lua script).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::client::{SMALL_REQUEST, Target};
use crate::error::{BenchError, Result};

/// `wrk` and its two request scripts (with and without the direct caller's bearer token).
#[derive(Debug, Clone)]
pub struct Wrk {
    bin: PathBuf,
    proxied: PathBuf,
    direct: PathBuf,
}

/// What one wrk run reported.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WrkRun {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    /// Socket errors plus non-2xx/3xx answers.
    pub errors: u64,
}

impl Wrk {
    /// Writes the scripts into `dir`.
    pub fn new(bin: &Path, dir: &Path) -> Result<Self> {
        let script = |auth: Option<&str>| {
            let mut s = format!(
                "wrk.method = \"POST\"\nwrk.body = '{SMALL_REQUEST}'\n\
                 wrk.headers[\"Content-Type\"] = \"application/json\"\n\
                 wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n"
            );
            if let Some(a) = auth {
                s.push_str(&format!("wrk.headers[\"Authorization\"] = \"{a}\"\n"));
            }
            s
        };
        let proxied = dir.join("post.lua");
        let direct = dir.join("post-direct.lua");
        std::fs::write(&proxied, script(None)).map_err(|e| BenchError::io("write post.lua", e))?;
        std::fs::write(&direct, script(Some(crate::DIRECT_BEARER)))
            .map_err(|e| BenchError::io("write post-direct.lua", e))?;
        Ok(Self {
            bin: bin.to_path_buf(),
            proxied,
            direct,
        })
    }

    /// Runs wrk (one thread, `connections` connections) against `target` for `duration`
    /// (whole seconds, at least 1).
    pub async fn run(
        &self,
        target: &Target,
        connections: usize,
        duration: Duration,
    ) -> Result<WrkRun> {
        let script = if target.authorization.is_some() {
            &self.direct
        } else {
            &self.proxied
        };
        let secs = duration.as_secs().max(1);
        let child = tokio::process::Command::new(&self.bin)
            .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
            .args(["--timeout", "5s", "-s"])
            .arg(script)
            .arg(target.url())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::io(format!("spawn {}", self.bin.display()), e))?;
        let output = tokio::time::timeout(Duration::from_secs(secs + 30), child.wait_with_output())
            .await
            .map_err(|_| BenchError::Tool("wrk did not finish in time".into()))?
            .map_err(|e| BenchError::io("wrk output", e))?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse(&text).ok_or_else(|| {
            BenchError::Tool(format!(
                "cannot read wrk's output:\n{text}\n{}",
                String::from_utf8_lossy(&output.stderr)
            ))
        })
    }
}

/// `5.00s`, `500.00ms`, `1.00m` → seconds.
fn parse_time(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches(',');
    if let Some(v) = s.strip_suffix("ms") {
        return v.parse::<f64>().ok().map(|v| v / 1e3);
    }
    if let Some(v) = s.strip_suffix("us") {
        return v.parse::<f64>().ok().map(|v| v / 1e6);
    }
    if let Some(v) = s.strip_suffix('s') {
        return v.parse().ok();
    }
    if let Some(v) = s.strip_suffix('m') {
        return v.parse::<f64>().ok().map(|v| v * 60.0);
    }
    None
}

fn parse(text: &str) -> Option<WrkRun> {
    let mut requests = None;
    let mut seconds = None;
    let mut rps = None;
    let mut errors = 0u64;
    for line in text.lines().map(str::trim) {
        if let Some((n, rest)) = line.split_once(" requests in ") {
            requests = n.trim().parse().ok();
            seconds = rest.split_whitespace().next().and_then(parse_time);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(WrkRun {
        requests: requests?,
        seconds: seconds?,
        rps: rps?,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:1/hub/mcp\n  1 threads and 32 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   300.00us  100.00us   5.00ms   90.00%\n  \
                   123456 requests in 5.00s, 20.00MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n  \
                   Non-2xx or 3xx responses: 4\nRequests/sec:  24691.20\nTransfer/sec:      4.00MB\n";
        let r = parse(out).unwrap();
        assert_eq!(r.requests, 123_456);
        assert!((r.seconds - 5.0).abs() < 1e-9);
        assert!((r.rps - 24_691.2).abs() < 1e-6);
        assert_eq!(r.errors, 10);
        assert!(parse("wrk: connection refused").is_none());
        assert_eq!(parse_time("1.00m"), Some(60.0));
        assert_eq!(parse_time("500.00ms"), Some(0.5));
    }
}
