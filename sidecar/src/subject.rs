//! Where subject tokens (and other file-held secrets) come from.
//!
//! [`WatchedFile`] re-reads a file only when it changed. The kubelet rotates projected tokens and
//! Secret volumes by swapping a `..data` symlink, so the path is `stat`ed on every use (following
//! symlinks) rather than keeping an open descriptor; the content is read again only when the
//! file's identity, size or times changed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use http::{HeaderMap, HeaderName};

use crate::secret::Secret;

/// Largest token or secret file read.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Why no subject token (or secret) is available.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SubjectError {
    /// The file cannot be read.
    #[error("{what} file {path} is unreadable: {reason}")]
    Unreadable {
        /// Which file ("subject token", "client secret"…).
        what: &'static str,
        /// Its path.
        path: String,
        /// The OS error or what is wrong with it.
        reason: String,
    },
    /// The file is empty (after trimming whitespace).
    #[error("{what} file {path} is empty")]
    Empty {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
    },
    /// Header mode: the request carries no token in the configured header.
    #[error("missing subject token: the request has no {0} header")]
    MissingHeader(HeaderName),
    /// Header mode: the header value is not a usable token.
    #[error("invalid subject token in the {0} header")]
    InvalidHeader(HeaderName),
}

impl SubjectError {
    /// Low-cardinality label.
    pub fn category(&self) -> &'static str {
        match self {
            SubjectError::Unreadable { .. } => "file_unreadable",
            SubjectError::Empty { .. } => "file_empty",
            SubjectError::MissingHeader(_) => "header_missing",
            SubjectError::InvalidHeader(_) => "header_invalid",
        }
    }
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The current content of a [`WatchedFile`].
#[derive(Clone, Debug)]
pub struct FileValue {
    /// Trimmed content.
    pub value: Secret,
    /// Increases whenever the content changes (not when only the file's times change).
    pub generation: u64,
}

#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    value: FileValue,
}

/// A small file holding a secret, re-read when it changes.
#[derive(Debug)]
pub struct WatchedFile {
    what: &'static str,
    path: PathBuf,
    loaded: Mutex<Option<Loaded>>,
}

impl WatchedFile {
    /// Watches `path`; `what` names it in errors ("subject token", "client secret"…).
    pub fn new(what: &'static str, path: impl Into<PathBuf>) -> Self {
        Self {
            what,
            path: path.into(),
            loaded: Mutex::new(None),
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's current content. One `stat` when nothing changed; a read when it did.
    pub fn current(&self) -> Result<FileValue, SubjectError> {
        let meta = std::fs::metadata(&self.path).map_err(|e| self.unreadable(e.to_string()))?;
        let stamp = Stamp::of(&meta);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = loaded.as_ref()
            && l.stamp == stamp
        {
            return Ok(l.value.clone());
        }
        if !meta.is_file() {
            return Err(self.unreadable("not a regular file".into()));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(self.unreadable(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        let bytes = std::fs::read(&self.path).map_err(|e| self.unreadable(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| self.unreadable("not UTF-8".into()))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(SubjectError::Empty {
                what: self.what,
                path: self.path.display().to_string(),
            });
        }
        let generation = match loaded.as_ref() {
            Some(l) if l.value.value.expose() == text => l.value.generation,
            Some(l) => l.value.generation + 1,
            None => 1,
        };
        let value = FileValue {
            value: Secret::new(text),
            generation,
        };
        *loaded = Some(Loaded {
            stamp,
            value: value.clone(),
        });
        Ok(value)
    }

    fn unreadable(&self, reason: String) -> SubjectError {
        SubjectError::Unreadable {
            what: self.what,
            path: self.path.display().to_string(),
            reason,
        }
    }
}

/// Header mode: the subject token a request carries in `name`, without a `Bearer ` prefix.
pub fn from_header(headers: &HeaderMap, name: &HeaderName) -> Result<Secret, SubjectError> {
    let mut values = headers.get_all(name).iter();
    let value = values
        .next()
        .ok_or_else(|| SubjectError::MissingHeader(name.clone()))?;
    if values.next().is_some() {
        return Err(SubjectError::InvalidHeader(name.clone()));
    }
    let text = value
        .to_str()
        .map_err(|_| SubjectError::InvalidHeader(name.clone()))?
        .trim();
    let token = match text.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => text[7..].trim_start(),
        _ if text.eq_ignore_ascii_case("bearer") => "",
        _ => text,
    };
    if token.is_empty() {
        return Err(SubjectError::MissingHeader(name.clone()));
    }
    if token.contains(' ') {
        return Err(SubjectError::InvalidHeader(name.clone()));
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "civic-sidecar-subject-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rereads_only_on_change() {
        let dir = temp_dir();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let file = WatchedFile::new("subject token", &path);
        let a = file.current().unwrap();
        assert_eq!(a.value.expose(), "one");
        assert_eq!(file.current().unwrap().generation, a.generation);
        std::fs::write(&path, "two").unwrap();
        let b = file.current().unwrap();
        assert_eq!(b.value.expose(), "two");
        assert!(b.generation > a.generation);
        // Same content rewritten: times change, generation does not.
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(file.current().unwrap().generation, b.generation);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn follows_kubelet_symlink_swap() {
        // token -> ..data/token, ..data -> ..v1; rotation points ..data at ..v2 by rename.
        let dir = temp_dir();
        std::fs::create_dir(dir.join("..v1")).unwrap();
        std::fs::create_dir(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v1/token"), "first").unwrap();
        std::fs::write(dir.join("..v2/token"), "second").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        let file = WatchedFile::new("subject token", dir.join("token"));
        assert_eq!(file.current().unwrap().value.expose(), "first");
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(file.current().unwrap().value.expose(), "second");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_not_the_content() {
        let dir = temp_dir();
        let file = WatchedFile::new("subject token", dir.join("missing"));
        let err = file.current().unwrap_err();
        assert_eq!(err.category(), "file_unreadable");
        assert!(err.to_string().contains("missing"));
        std::fs::write(dir.join("empty"), " \n").unwrap();
        let err = WatchedFile::new("client secret", dir.join("empty"))
            .current()
            .unwrap_err();
        assert_eq!(err.category(), "file_empty");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn header_subject() {
        let name = HeaderName::from_static("authorization");
        let mut h = HeaderMap::new();
        assert_eq!(
            from_header(&h, &name).unwrap_err().category(),
            "header_missing"
        );
        h.insert(&name, HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(from_header(&h, &name).unwrap().expose(), "abc.def");
        h.insert(&name, HeaderValue::from_static("bearer   xyz"));
        assert_eq!(from_header(&h, &name).unwrap().expose(), "xyz");
        h.insert(&name, HeaderValue::from_static("raw-token"));
        assert_eq!(from_header(&h, &name).unwrap().expose(), "raw-token");
        h.insert(&name, HeaderValue::from_static("Bearer "));
        assert_eq!(
            from_header(&h, &name).unwrap_err().category(),
            "header_missing"
        );
        h.insert(&name, HeaderValue::from_static("Basic a b"));
        assert_eq!(
            from_header(&h, &name).unwrap_err().category(),
            "header_invalid"
        );
        h.insert(&name, HeaderValue::from_static("a"));
        h.append(&name, HeaderValue::from_static("b"));
        assert_eq!(
            from_header(&h, &name).unwrap_err().category(),
            "header_invalid"
        );
    }
}
