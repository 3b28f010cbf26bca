//! The reference proxy: nginx with one worker, adding a static bearer header, keep-alive
//! upstream connections and `proxy_buffering off`, configured in a temp dir and run as a
//! non-daemon child.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};
use crate::procfs;

/// The token nginx adds (the static-bearer setup a user would write by hand).
pub const NGINX_BEARER: &str = "Bearer nginx-static-token";

/// How nginx reaches the upstream.
#[derive(Debug, Clone)]
pub struct NginxUpstream {
    pub addr: SocketAddr,
    /// CA file to verify the upstream's certificate (TLS upstream).
    pub ca_file: Option<PathBuf>,
}

/// A running nginx (master plus one worker); stopped on drop.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl std::fmt::Debug for Nginx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nginx")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish()
    }
}

/// A free loopback port (nginx cannot report a port-0 bind): bound then released.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("find a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("find a free port", e))
}

/// The configuration file's text.
pub fn config(dir: &Path, listen: SocketAddr, upstream: &NginxUpstream, as_root: bool) -> String {
    let d = dir.display();
    let user = if as_root { "user root root;\n" } else { "" };
    let (scheme, tls) = match &upstream.ca_file {
        None => ("http", String::new()),
        Some(ca) => (
            "https",
            format!(
                "            proxy_ssl_verify on;\n            proxy_ssl_trusted_certificate {};\n            \
                 proxy_ssl_name localhost;\n            proxy_ssl_server_name on;\n            \
                 proxy_ssl_session_reuse on;\n",
                ca.display()
            ),
        ),
    };
    format!(
        "{user}worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{\n    worker_connections 8192;\n}}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/client_body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
         keepalive_requests 1000000;\n    keepalive_timeout 400s;\n\
         \n    upstream hub {{\n        server {up};\n        keepalive 256;\n        \
         keepalive_requests 1000000;\n        keepalive_timeout 400s;\n    }}\n\
         \n    server {{\n        listen {listen};\n        \
         location = /hub/mcp {{\n            proxy_pass {scheme}://hub;\n            \
         proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n            \
         proxy_set_header Authorization \"{NGINX_BEARER}\";\n            \
         proxy_buffering off;\n            proxy_read_timeout 400s;\n{tls}        }}\n        \
         location / {{\n            return 404;\n        }}\n    }}\n}}\n",
        up = upstream.addr,
    )
}

impl Nginx {
    /// Writes the configuration into `dir` and starts `bin` on a free loopback port; `args`
    /// come first (`bin` may be `taskset` with `-c CPUS nginx`).
    pub fn start(
        bin: &Path,
        args: &[String],
        dir: &Path,
        upstream: &NginxUpstream,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| BenchError::io("nginx dir", e))?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let as_root = procfs::is_root();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, listen, upstream, as_root))
            .map_err(|e| BenchError::io("write nginx.conf", e))?;
        let child = Command::new(bin)
            .args(args)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::io(format!("spawn {}", bin.display()), e))?;
        let mut nginx = Self {
            child,
            addr: listen,
            dir: dir.to_path_buf(),
        };
        nginx.wait_ready()?;
        Ok(nginx)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
                return Err(BenchError::Setup(format!(
                    "nginx exited with {status}: {log}"
                )));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
                && !self.workers().is_empty()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup("nginx did not listen within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn master(&self) -> u32 {
        self.child.id()
    }

    /// The worker processes (one).
    pub fn workers(&self) -> Vec<u32> {
        procfs::children(self.child.id())
    }

    /// Master and workers: every process whose CPU is nginx's.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = vec![self.master()];
        p.extend(self.workers());
        p
    }

    /// The worker's resident set, KiB (the master's is constant and reported apart).
    pub fn worker_rss_kib(&self) -> Result<u64> {
        self.workers()
            .iter()
            .map(|p| procfs::rss_kib(*p))
            .sum::<Result<u64>>()
    }

    pub fn master_rss_kib(&self) -> Result<u64> {
        procfs::rss_kib(self.master())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM via kill(1) (fast shutdown of master and worker); SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_reference_settings() {
        let up = NginxUpstream {
            addr: "127.0.0.1:4000".parse().unwrap(),
            ca_file: Some(PathBuf::from("/tmp/ca.pem")),
        };
        let c = config(
            Path::new("/tmp/x"),
            "127.0.0.1:5000".parse().unwrap(),
            &up,
            false,
        );
        for needle in [
            "worker_processes 1;",
            "daemon off;",
            "proxy_buffering off;",
            "keepalive 256;",
            "proxy_pass https://hub;",
            "proxy_ssl_trusted_certificate /tmp/ca.pem;",
            "proxy_set_header Connection \"\";",
            NGINX_BEARER,
            "listen 127.0.0.1:5000;",
        ] {
            assert!(c.contains(needle), "{needle} missing in\n{c}");
        }
        assert!(!c.contains("user root"));
        let plain = config(
            Path::new("/tmp/x"),
            "127.0.0.1:5000".parse().unwrap(),
            &NginxUpstream {
                addr: up.addr,
                ca_file: None,
            },
            true,
        );
        assert!(plain.contains("proxy_pass http://hub;") && !plain.contains("proxy_ssl"));
        assert!(plain.starts_with("user root root;"));
    }
}
