//! Scratch directories and the shared log directory, without extra crates.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The workspace `target/` directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
}

/// `target/civic-test-logs/`, created on first use: one file per spawned process.
pub fn test_logs_dir() -> PathBuf {
    let dir = target_dir().join("civic-test-logs");
    std::fs::create_dir_all(&dir).expect("create target/civic-test-logs");
    dir
}

/// A directory removed (best effort) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "civic-testkit-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `contents` to `name` in this directory and return the full path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        write_file(&p, contents);
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Replace a file's contents as the kubelet does for projected volumes: write a sibling, then
/// rename over the target, so readers never see a half-written file.
pub fn write_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-swap");
    {
        let mut f = std::fs::File::create(&tmp).expect("create temp file");
        f.write_all(contents.as_bytes()).expect("write temp file");
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path).expect("rename into place");
}
