//! Text features cached on disk, keyed by model and prompt text, so a class's
//! prompts are encoded once and an edit re-encodes only what changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::clip::{Clip, ClipError};

/// Prompts per text-tower batch. Batches are formed from prompts of similar token
/// length, and each batch is cut to its longest prompt.
const TEXT_BATCH: usize = 64;

#[derive(Deserialize)]
struct CacheFile {
    model: String,
    dim: usize,
    features: HashMap<String, Vec<f32>>,
}

/// `CacheFile` by reference, so saving does not copy the features.
#[derive(Serialize)]
struct CacheFileRef<'a> {
    model: &'a str,
    dim: usize,
    features: &'a HashMap<String, Vec<f32>>,
}

/// L2-normalised text features of one model.
pub struct TextFeatureCache {
    /// `None`: memory only.
    file: Option<PathBuf>,
    model: String,
    dim: usize,
    features: HashMap<String, Vec<f32>>,
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
    /// A cache for `model` (its identity string) in `dir`; a missing, stale or
    /// unreadable file just starts an empty cache.
    pub fn open(dir: Option<&Path>, model: &str, dim: usize) -> Self {
        let file = dir.map(|d| d.join("text-features").join(format!("{:016x}.json", fnv1a(model.as_bytes()))));
        let features = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|c| c.model == model && c.dim == dim)
            .map(|c| c.features)
            .unwrap_or_default();
        Self {
            file,
            model: model.to_owned(),
            dim,
            features,
            encoded: 0,
        }
    }

    /// Features [N, E] of `texts`, encoding only those not cached yet.
    pub fn features(&mut self, clip: &Clip, texts: &[String]) -> Result<Tensor, ClipError> {
        let mut missing: Vec<&String> = texts.iter().filter(|t| !self.features.contains_key(*t)).collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            // Group by token length so each batch is cut short with little padding.
            let mut by_length = missing
                .iter()
                .map(|t| Ok((clip.tokenizer.encode(t)?.len(), *t)))
                .collect::<Result<Vec<_>, ClipError>>()?;
            by_length.sort();
            for batch in by_length.chunks(TEXT_BATCH) {
                let refs: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
                let rows = clip.encode_texts(&refs)?.to_vec2::<f32>()?;
                self.encoded += refs.len();
                for (text, row) in refs.iter().zip(rows) {
                    self.features.insert((*text).to_owned(), row);
                }
            }
            self.save();
        }
        let data: Vec<f32> = texts.iter().flat_map(|t| self.features[t].iter().copied()).collect();
        Ok(Tensor::from_vec(data, (texts.len(), self.dim), &clip.device)?)
    }

    /// Best effort: a cache that cannot be written only costs time later.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let content = CacheFileRef {
            model: &self.model,
            dim: self.dim,
            features: &self.features,
        };
        if let Ok(json) = serde_json::to_vec(&content) {
            let _ = crate::files::write_atomic(file, &json);
        }
    }
}
