//! `SidecarProcess`: runs the real `civic-sidecar` binary with a clean environment, finds the
//! bound addresses in its logs, waits for readiness, captures its output (in memory and in
//! `target/civic-test-logs/`) and fails the test if any known secret shows up in that output.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::client;
use crate::fs::test_logs_dir;
use crate::secrets;

/// What `spawn` waits for once the addresses are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `/readyz` answers 200 (a token can be served).
    Ready,
    /// `/livez` answers 200.
    Live,
    /// Only the two "listening" log lines.
    Listening,
}

/// How long `spawn` waits for the listeners and readiness.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Builder for [`SidecarProcess`].
#[derive(Debug, Clone)]
pub struct SidecarBuilder {
    bin: PathBuf,
    name: String,
    env: BTreeMap<String, String>,
    args: Vec<String>,
    readiness: Readiness,
}

/// Captured output lines, shared with the reader threads.
#[derive(Clone, Default)]
struct Output {
    lines: Arc<Mutex<Vec<String>>>,
}

/// The running sidecar. Killed on drop; its output is scanned for secrets on
/// [`finish`](SidecarProcess::finish) or on drop.
pub struct SidecarProcess {
    child: Child,
    name: String,
    log_path: PathBuf,
    output: Output,
    readers: Vec<std::thread::JoinHandle<()>>,
    proxy: SocketAddr,
    admin: SocketAddr,
    scanned: bool,
}

impl std::fmt::Debug for SidecarProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("proxy", &self.proxy)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// A process that ran to its end.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub lines: Vec<String>,
    pub log_path: PathBuf,
}

impl SidecarBuilder {
    /// `bin` is `env!("CARGO_BIN_EXE_civic-sidecar")`; `name` names the log file (the test name).
    pub fn new(bin: impl Into<PathBuf>, name: &str) -> Self {
        let mut env = BTreeMap::new();
        env.insert("CIVIC_LISTEN_ADDR".into(), "127.0.0.1:0".into());
        env.insert("CIVIC_ADMIN_ADDR".into(), "127.0.0.1:0".into());
        // Verbose on purpose: the secret scan is only as good as what gets logged.
        env.insert("CIVIC_LOG".into(), "debug".into());
        env.insert("RUST_BACKTRACE".into(), "1".into());
        Self {
            bin: bin.into(),
            name: name.into(),
            env,
            args: Vec::new(),
            readiness: Readiness::Ready,
        }
    }

    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.env.insert(key.into(), value.as_ref().into());
        self
    }

    pub fn env_path(self, key: &str, value: &Path) -> Self {
        let v = value.to_string_lossy().into_owned();
        self.env(key, v)
    }

    pub fn remove_env(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn readiness(mut self, r: Readiness) -> Self {
        self.readiness = r;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .envs(&self.env)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn start(&self) -> anyhow::Result<(Child, Output, PathBuf, Vec<std::thread::JoinHandle<()>>)> {
        let mut child = self
            .command()
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let safe: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let log_path = test_logs_dir().join(format!("{safe}-{}.log", child.id()));
        let file = Arc::new(Mutex::new(std::fs::File::create(&log_path)?));
        let output = Output::default();
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (tag, pipe) in [
            ("out", Box::new(stdout) as Box<dyn std::io::Read + Send>),
            ("err", Box::new(stderr)),
        ] {
            let out = output.clone();
            let file = file.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(file.lock().unwrap(), "[{tag}] {line}");
                    out.lines.lock().unwrap().push(line);
                }
            }));
        }
        Ok((child, output, log_path, readers))
    }

    /// Start the sidecar and wait until it is listening and (per [`Readiness`]) ready.
    pub async fn spawn(self) -> anyhow::Result<SidecarProcess> {
        let (mut child, output, log_path, readers) = self.start()?;
        let deadline = Instant::now() + START_TIMEOUT;
        let (proxy, admin) = loop {
            let lines = output.lines.lock().unwrap().clone();
            let proxy = lines
                .iter()
                .find_map(|l| listening_addr(l, "proxy listening"));
            let admin = lines
                .iter()
                .find_map(|l| listening_addr(l, "admin listening"));
            if let (Some(p), Some(a)) = (proxy, admin) {
                break (p, a);
            }
            if let Some(status) = child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50));
                let lines = output.lines.lock().unwrap().join("\n");
                bail!("civic-sidecar exited with {status} before listening; output:\n{lines}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let lines = output.lines.lock().unwrap().join("\n");
                bail!(
                    "civic-sidecar did not log 'proxy listening' and 'admin listening' with an addr; output:\n{lines}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut p = SidecarProcess {
            child,
            name: self.name,
            log_path,
            output,
            readers,
            proxy,
            admin,
            scanned: false,
        };
        let path = match self.readiness {
            Readiness::Ready => "/readyz",
            Readiness::Live => "/livez",
            Readiness::Listening => return Ok(p),
        };
        loop {
            if let Ok(r) = client::get(admin, path).await
                && r.status == 200
            {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "civic-sidecar exited with {status} while waiting for {path}; output:\n{}",
                    p.output_text()
                );
            }
            if Instant::now() > deadline {
                p.scanned = true;
                bail!(
                    "civic-sidecar not {path} within {START_TIMEOUT:?}; output:\n{}",
                    p.output_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Run the sidecar expecting it to exit by itself (e.g. invalid config) within `timeout`.
    /// Its output is scanned for secrets as well.
    pub async fn run_to_exit(self, timeout: Duration) -> anyhow::Result<Exited> {
        let (mut child, output, log_path, readers) = self.start()?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "civic-sidecar still running after {timeout:?}; output:\n{}",
                    output.lines.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for r in readers {
            let _ = r.join();
        }
        let lines = output.lines.lock().unwrap().clone();
        assert_no_leaks(&self.name, &lines.join("\n"), &log_path);
        Ok(Exited {
            status,
            lines,
            log_path,
        })
    }
}

/// Extract `addr` from a log line whose message is `message` (JSON or text format).
pub fn listening_addr(line: &str, message: &str) -> Option<SocketAddr> {
    if !line.contains(message) {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let found = v
            .pointer("/fields/addr")
            .or_else(|| v.get("addr"))
            .or_else(|| v.pointer("/span/addr"))
            .and_then(|a| a.as_str().map(str::to_string));
        if let Some(a) = found.and_then(|a| a.parse().ok()) {
            return Some(a);
        }
    }
    // Text format: `... addr=127.0.0.1:1234` or `addr="127.0.0.1:1234"`.
    let idx = line.find("addr=")?;
    let rest = line[idx + 5..].trim_start_matches('"');
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '}')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn assert_no_leaks(name: &str, text: &str, log_path: &Path) {
    let leaks = secrets::find_leaks(text, &secrets::known_secrets());
    assert!(
        leaks.is_empty(),
        "statement 20: secrets found in the output of sidecar `{name}` ({}): {leaks:?}",
        log_path.display()
    );
}

impl SidecarProcess {
    pub fn builder(bin: impl Into<PathBuf>, name: &str) -> SidecarBuilder {
        SidecarBuilder::new(bin, name)
    }

    /// The proxy listener's bound address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://<proxy>/hub/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/hub/mcp", self.proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Every output line so far (stdout and stderr interleaved as read).
    pub fn lines(&self) -> Vec<String> {
        self.output.lines.lock().unwrap().clone()
    }

    pub fn output_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Wait until some output line contains `needle`.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Fetch `/metrics` from the admin listener.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let r = client::get(self.admin, "/metrics").await?;
        anyhow::ensure!(r.status == 200, "/metrics answered {}", r.status);
        Ok(r.text())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send SIGTERM (by pid, via `kill(1)`: no `unsafe` here).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(st.success(), "kill -TERM failed: {st}");
        Ok(())
    }

    /// Wait up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > end {
                bail!("civic-sidecar did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resident set size in KiB (from `/proc`), for footprint checks.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmRSS")
    }

    /// Stop the process and fail if its output contains a known secret. Call at the end of
    /// every test (drop does the same when the test is not already failing).
    pub fn finish(mut self) {
        self.stop_and_scan();
    }

    fn stop_and_scan(&mut self) {
        if self.scanned {
            return;
        }
        self.scanned = true;
        // The final /metrics goes to the log dir too, for the suite-wide secret scan.
        if matches!(self.child.try_wait(), Ok(None)) {
            let file = self
                .log_path
                .file_stem()
                .map(|s| format!("{}-metrics.txt", s.to_string_lossy()))
                .unwrap_or_else(|| "sidecar-metrics.txt".to_owned());
            if let Err(e) = crate::capture::capture_metrics(self.admin, &file, &self.name) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("statement 20: sidecar `{}`: {e:#}", self.name);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        assert_no_leaks(&self.name, &self.output_text(), &self.log_path);
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.scanned = true;
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        }
        self.stop_and_scan();
    }
}

/// A KiB field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...); `None` if the process or the
/// field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_text_listening_lines() {
        let j = r#"{"timestamp":"x","level":"INFO","fields":{"message":"proxy listening","addr":"127.0.0.1:4321"},"target":"civic_sidecar"}"#;
        assert_eq!(
            listening_addr(j, "proxy listening"),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        let t = "2026-11-27T10:00:00Z  INFO civic_sidecar::admin: admin listening addr=[::1]:99";
        assert_eq!(
            listening_addr(t, "admin listening"),
            Some("[::1]:99".parse().unwrap())
        );
        assert_eq!(listening_addr(t, "proxy listening"), None);
    }
}
