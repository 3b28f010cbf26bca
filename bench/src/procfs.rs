//! CPU time and resident memory of the processes under test, from `/proc`.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{BenchError, Result};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// The fields after `comm` in `/proc/<pid>/stat` (field 3 onwards).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| BenchError::io(format!("read /proc/{pid}/stat"), e))?;
    // `comm` may hold spaces and parentheses: the fields start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Tool(format!("/proc/{pid}/stat has no ')'")))?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

/// User plus system CPU time of `pid` (all its threads) so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let f = stat_fields(pid)?;
    // After ')': state(3) ppid(4) … utime(14) stime(15) → indexes 11 and 12 here.
    let tick = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BenchError::Tool(format!("/proc/{pid}/stat field {}", i + 3)))
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Summed CPU time of several processes.
pub fn cpu_time_all(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|p| cpu_time(*p)).sum()
}

/// Resident set size of `pid`, KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| BenchError::io(format!("read /proc/{pid}/status"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Tool(format!("/proc/{pid}/status has no VmRSS")))
}

/// Whether this process runs as root (nginx then needs `user root` to read the temp dir).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Children of `parent` (by scanning `/proc`), e.g. nginx's workers.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid)
                .ok()
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect();
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        // Burn a little CPU so the counter is not trivially zero on a coarse clock.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_time(me).unwrap() > Duration::ZERO);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = children(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }
}
