//! Text features cached on disk, keyed by model and prompt text, so a class's
//! prompts are encoded once and an edit re-encodes only what changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use crate::clip::{Clip, ClipError, l2_normalize};

/// Prompts per text-tower batch. Batches are formed from prompts of similar token
/// length, and each batch is cut to its longest prompt.
const TEXT_BATCH: usize = 64;

/// The file format: a file of another format (or of none: the first format, without
/// the norms) starts an empty cache rather than being misread.
/// 2: each text's norm before normalisation (`norms`) beside its unit feature.
const FORMAT: u32 = 2;

#[derive(Deserialize)]
struct CacheFile {
    format: u32,
    model: String,
    dim: usize,
    features: HashMap<String, Vec<f32>>,
    norms: HashMap<String, f32>,
}

/// `CacheFile` by reference, so saving does not copy the features.
#[derive(Serialize)]
struct CacheFileRef<'a> {
    format: u32,
    model: &'a str,
    dim: usize,
    features: &'a HashMap<String, Vec<f32>>,
    norms: &'a HashMap<String, f32>,
}

/// Text features of one model: each text's L2-normalised feature and the norm it had
/// before (the raw feature is their product; AnoVL averages raw features).
pub struct TextFeatureCache {
    /// `None`: memory only.
    file: Option<PathBuf>,
    model: String,
    dim: usize,
    features: HashMap<String, Vec<f32>>,
    norms: HashMap<String, f32>,
    /// How many texts went through the text tower (tests check cache hits with it).
    pub encoded: usize,
}

/// FNV-1a: file names from model identities and file contents, stable across builds.
pub(crate) fn fnv1a(text: &[u8]) -> u64 {
    text.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// `$XDG_CACHE_HOME/alfa` or `~/.cache/alfa`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("alfa"))
}

impl TextFeatureCache {
    /// A cache for `model` (its identity string) in `dir`; a missing, stale,
    /// unreadable or older-format file just starts an empty cache.
    pub fn open(dir: Option<&Path>, model: &str, dim: usize) -> Self {
        let file = dir.map(|d| d.join("text-features").join(format!("{:016x}.json", fnv1a(model.as_bytes()))));
        let (mut features, norms) = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|c| c.format == FORMAT && c.model == model && c.dim == dim)
            .map(|c| (c.features, c.norms))
            .unwrap_or_default();
        // An entry is its unit feature and its norm, or it is encoded again.
        features.retain(|text, feature| feature.len() == dim && norms.contains_key(text));
        let norms = norms.into_iter().filter(|(text, _)| features.contains_key(text)).collect();
        Self {
            file,
            model: model.to_owned(),
            dim,
            features,
            norms,
            encoded: 0,
        }
    }

    /// L2-normalised features [N, E] of `texts`, encoding only those not cached yet.
    pub fn features(&mut self, clip: &Clip, texts: &[String]) -> Result<Tensor, ClipError> {
        self.encode_missing(clip, texts)?;
        let data: Vec<f32> = texts.iter().flat_map(|t| self.features[t].iter().copied()).collect();
        Ok(Tensor::from_vec(data, (texts.len(), self.dim), &clip.device)?)
    }

    /// The text tower's features before normalisation [N, E] (unit feature times its
    /// norm), encoding only the texts not cached yet.
    pub fn raw_features(&mut self, clip: &Clip, texts: &[String]) -> Result<Tensor, ClipError> {
        self.encode_missing(clip, texts)?;
        let data: Vec<f32> = texts
            .iter()
            .flat_map(|t| {
                let norm = self.norms[t];
                self.features[t].iter().map(move |v| v * norm)
            })
            .collect();
        Ok(Tensor::from_vec(data, (texts.len(), self.dim), &clip.device)?)
    }

    fn encode_missing(&mut self, clip: &Clip, texts: &[String]) -> Result<(), ClipError> {
        let mut missing: Vec<&String> = texts.iter().filter(|t| !self.features.contains_key(*t)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort();
        missing.dedup();
        // Group by token length so each batch is cut short with little padding.
        let mut by_length = missing
            .iter()
            .map(|t| Ok((clip.tokenizer.encode(t)?.len(), *t)))
            .collect::<Result<Vec<_>, ClipError>>()?;
        by_length.sort();
        for batch in by_length.chunks(TEXT_BATCH) {
            let refs: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
            let raw = clip.encode_texts_raw(&refs)?;
            // The unit features are `encode_texts`'s, to the bit.
            let rows = l2_normalize(&raw)?.to_vec2::<f32>()?;
            let norms = raw.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1::<f32>()?;
            self.encoded += refs.len();
            for ((text, row), norm) in refs.iter().zip(rows).zip(norms) {
                self.features.insert((*text).to_owned(), row);
                self.norms.insert((*text).to_owned(), norm);
            }
        }
        self.save();
        Ok(())
    }

    /// Best effort: a cache that cannot be written only costs time later.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let content = CacheFileRef {
            format: FORMAT,
            model: &self.model,
            dim: self.dim,
            features: &self.features,
            norms: &self.norms,
        };
        if let Ok(json) = serde_json::to_vec(&content) {
            let _ = crate::files::write_atomic(file, &json);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, model: &str, json: serde_json::Value) {
        let file = dir.join("text-features").join(format!("{:016x}.json", fnv1a(model.as_bytes())));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, serde_json::to_vec(&json).unwrap()).unwrap();
    }

    #[test]
    fn a_file_of_the_first_format_is_not_read_as_raw_features() {
        let dir = tempfile::tempdir().unwrap();
        // The first format: unit features only, no format field, no norms.
        write(dir.path(), "m", serde_json::json!({"model": "m", "dim": 2, "features": {"a": [0.6, 0.8]}}));
        let cache = TextFeatureCache::open(Some(dir.path()), "m", 2);
        assert!(cache.features.is_empty() && cache.norms.is_empty());
    }

    #[test]
    fn the_current_format_keeps_unit_features_and_norms() {
        let dir = tempfile::tempdir().unwrap();
        let features = serde_json::json!({"a": [0.6, 0.8], "b": [1.0, 0.0], "c": [0.0, 1.0, 0.0]});
        write(
            dir.path(),
            "m",
            serde_json::json!({"format": FORMAT, "model": "m", "dim": 2, "features": features, "norms": {"a": 5.0, "c": 2.0}}),
        );
        let cache = TextFeatureCache::open(Some(dir.path()), "m", 2);
        // `b` has no norm and `c` the wrong size: both are dropped, to be encoded again.
        assert_eq!(cache.features.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!((cache.features["a"].clone(), cache.norms["a"]), (vec![0.6, 0.8], 5.0));
        assert_eq!(cache.norms.len(), 1);
        // Another format number is not read either.
        write(
            dir.path(),
            "m",
            serde_json::json!({"format": FORMAT + 1, "model": "m", "dim": 2, "features": {"a": [0.6, 0.8]}, "norms": {"a": 5.0}}),
        );
        assert!(TextFeatureCache::open(Some(dir.path()), "m", 2).features.is_empty());
    }
}
