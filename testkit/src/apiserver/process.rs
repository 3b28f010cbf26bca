//! Child processes of a test cluster: spawning with logs to a file, readiness polling helpers,
//! and killing without leaving orphans.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How much of a log an error message quotes.
const LOG_TAIL_BYTES: usize = 6_000;

/// One running component (etcd, kube-apiserver, kube-controller-manager).
pub(crate) struct ManagedProcess {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl std::fmt::Debug for ManagedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log", &self.log)
            .finish()
    }
}

impl ManagedProcess {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    ///
    /// Where util-linux `setpriv` exists the child gets a parent-death signal, so even a test
    /// process killed with SIGKILL (no destructors) leaves no etcd or apiserver behind. Linux
    /// sends it when the *thread* that spawned the child exits, so a cluster must be started and
    /// dropped within one test (the normal case), not parked in a static.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match find_setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({})", program.display()))?;
        Ok(Self { name, child, log })
    }

    /// `Some(description)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// The last part of the log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// An error naming the process, why it failed, and its log tail.
    pub fn failure(&mut self, what: &str) -> anyhow::Error {
        let status = self
            .exit_status()
            .map_or_else(|| "still running".to_owned(), |s| format!("exited: {s}"));
        anyhow::anyhow!(
            "{} {what} ({status}); log {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail()
        )
    }

    /// SIGKILL and wait for the exit, so its port is free when this returns.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child
                .kill()
                .await
                .with_context(|| format!("killing {}", self.name))?;
        }
        Ok(())
    }

    /// For `Drop`: SIGKILL and reap for up to `limit` without an async context.
    pub fn kill_blocking(&mut self, limit: Duration) {
        let _ = self.child.start_kill();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

pub(crate) fn log_tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return "<no log>".to_owned();
    };
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Whether a failed start was a lost race for a port picked by [`free_port`].
pub(crate) fn lost_port_race(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|s| s.contains("address already in use"))
}

/// A port that was free on 127.0.0.1 a moment ago. The components take ports as flags, so the
/// port is released before they bind it; callers retry when they lose that race.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `name` from `PATH`, or `fallback` if it exists.
pub(crate) fn find_program(name: &str, fallback: &str) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    from_path.or_else(|| {
        let fallback = PathBuf::from(fallback);
        fallback.is_file().then_some(fallback)
    })
}

fn find_setpriv() -> Option<PathBuf> {
    find_program("setpriv", "/usr/bin/setpriv")
}

/// A minimal HTTP/1.0 GET on loopback, for etcd's `/health` (plain HTTP, no client needed).
pub(crate) async fn http_get_loopback(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut body = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}
