//! Atomic outputs: write next to the target, then rename into place, so a reader never
//! sees a half-written file or store and a failure leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// A fresh hidden path beside `path` (same directory, so the final rename stays on one
/// file system).
pub fn temporary_sibling(path: &Path) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        ),
    })?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(dir.join(format!(
        ".{}.{}-{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Write `bytes` to `path` through a temporary sibling file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_sibling(path)?;
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Build a directory at `path`, which must not exist, all at once: `fill` writes into a
/// temporary sibling directory, which is renamed to `path` when `fill` succeeds and removed
/// when it fails.
pub fn create_directory_atomically<T>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    if path.exists() {
        return Err(Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "refusing to overwrite"),
        });
    }
    let tmp = temporary_sibling(path)?;
    std::fs::create_dir(&tmp).map_err(|source| Error::Io {
        path: tmp.display().to_string(),
        source,
    })?;
    let result = fill(&tmp).and_then(|out| {
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(out)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
