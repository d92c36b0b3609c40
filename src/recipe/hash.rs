//! The content hash of a model's weights (BLAKE3), computed once per file version: the
//! result is cached in the per-user cache folder keyed by the file's path, size and
//! modification time, so an 800 MB file is read once, not at every start.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A file's hash, and whether it came from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightsHash {
    /// 64 hex digits.
    pub hex: String,
    /// Read from the cache: the file itself was not read.
    pub cached: bool,
}

/// The cache file, `<cache>/weights-blake3.json`: `{"<path>|<size>|<mtime ns>": "<hex>"}`.
const CACHE_FILE: &str = "weights-blake3.json";
/// Entries kept; older ones (in key order) go first. Models are few.
const MAX_ENTRIES: usize = 256;

/// BLAKE3 of `path`, from the cache in `cache` when the file has not changed since.
pub fn weights_blake3(path: &Path, cache: Option<&Path>) -> std::io::Result<WeightsHash> {
    let meta = std::fs::metadata(path)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let key = format!("{}|{}|{modified}", canonical.display(), meta.len());
    let file = cache.map(|c| c.join(CACHE_FILE));
    let mut entries: BTreeMap<String, String> = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if let Some(hex) = entries.get(&key) {
        return Ok(WeightsHash { hex: hex.clone(), cached: true });
    }
    let hex = hash_file(path)?;
    if let Some(file) = file {
        // Entries of older versions of the same file are dropped; a cache that cannot be
        // written only costs the hash again next time.
        let prefix = format!("{}|", canonical.display());
        entries.retain(|k, _| !k.starts_with(&prefix));
        while entries.len() >= MAX_ENTRIES {
            entries.pop_first();
        }
        entries.insert(key, hex.clone());
        if let Ok(json) = serde_json::to_vec_pretty(&entries) {
            let _ = crate::files::write_atomic(&file, &json);
        }
    }
    Ok(WeightsHash { hex, cached: false })
}

/// BLAKE3 of a file's bytes, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_computed_once_per_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("model.safetensors");
        std::fs::write(&weights, b"weights one").unwrap();
        let cache = dir.path().join("cache");
        let first = weights_blake3(&weights, Some(&cache)).unwrap();
        assert!(!first.cached);
        assert_eq!(first.hex, blake3::hash(b"weights one").to_hex().to_string());
        let second = weights_blake3(&weights, Some(&cache)).unwrap();
        assert_eq!(second, WeightsHash { hex: first.hex.clone(), cached: true });

        // Proof that the second call did not read the file: a planted cache entry wins.
        let file = cache.join(CACHE_FILE);
        let planted = std::fs::read_to_string(&file).unwrap().replace(&first.hex, &"0".repeat(64));
        std::fs::write(&file, planted).unwrap();
        assert_eq!(weights_blake3(&weights, Some(&cache)).unwrap().hex, "0".repeat(64));

        // A new version of the file (other size, other time) is hashed again.
        std::fs::write(&weights, b"weights number two").unwrap();
        let modified = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&weights).unwrap().set_modified(modified).unwrap();
        let third = weights_blake3(&weights, Some(&cache)).unwrap();
        assert_eq!(third, WeightsHash { hex: blake3::hash(b"weights number two").to_hex().to_string(), cached: false });
        let kept: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(kept.len(), 1, "the old version's entry is dropped");

        // Without a cache folder it is simply computed.
        assert!(!weights_blake3(&weights, None).unwrap().cached);
    }
}
