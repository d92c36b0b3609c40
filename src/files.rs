//! Writing files so that a reader sees the old content or the new one, never half:
//! maps an evaluation reads, prompt sets a user edits, caches.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a uniquely named temporary file beside `path`, flushes it to
/// disk, then renames it over `path` (creating the folder if needed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".alfa-").suffix(".partial").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
