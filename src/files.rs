//! Writing files so that a reader sees the old content or the new one, never half:
//! maps an evaluation reads, prompt sets a user edits, caches.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a uniquely named temporary file beside `path`, flushes it to
/// disk, then renames it over `path` (creating the folder if needed).
///
/// The new file gets the permissions a plain `File::create` would give: a file that
/// is replaced keeps its own mode, a new one gets 0666 less the user's umask.
/// (`tempfile` alone creates 0600 files, which the rename would make every saved
/// prompt set and export private.)
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".alfa-").suffix(".partial");
    let existing = std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.permissions());
    #[cfg(unix)]
    let permissions = {
        use std::os::unix::fs::PermissionsExt;
        // Passed to open(2), which applies the umask, as File::create does.
        Some(std::fs::Permissions::from_mode(0o666))
    };
    #[cfg(not(unix))]
    let permissions = None;
    if let Some(permissions) = permissions {
        builder.permissions(permissions);
    }
    let mut tmp = builder.tempfile_in(dir)?;
    if let Some(existing) = existing {
        tmp.as_file().set_permissions(existing)?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::write_atomic;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_get_the_mode_file_create_gives_and_replaced_files_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.txt");
        std::fs::File::create(&plain).unwrap();
        let written = dir.path().join("sub/written.txt");
        write_atomic(&written, b"one").unwrap();
        // Whatever the test runner's umask, an atomic write equals a plain create.
        assert_eq!(mode(&written), mode(&plain));

        std::fs::set_permissions(&written, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&written, b"two").unwrap();
        assert_eq!(mode(&written), 0o640);
        assert_eq!(std::fs::read(&written).unwrap(), b"two");
    }
}

/// A key that changes whenever the file at `path` changes (its canonical path, size and
/// modification time): caches of what was computed from a model's weights use it.
pub fn file_identity(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let len = meta.as_ref().map_or(0, |m| m.len());
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    format!("{}|{len}|{modified}", path.display())
}
