//! DINOv2 weights: where they come from (a file, a folder, or the hub repo the candle
//! examples use) and how they reach `candle_transformers`' model.
//!
//! The crate's `DinoVisionTransformer` asks its `VarBuilder` for an ImageNet classifier
//! `head` that feature extraction never runs, and which backbone-only checkpoints
//! (DINOv2's own `dinov2_vits14_pretrain.pth` converted, timm's, our test fixtures)
//! do not have. [`WeightsBackend`] supplies that head as zeros and hands every other
//! tensor over from the file, checking its shape, so the model is used as published
//! rather than copied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::Dinov2Error;
use crate::hub::{DownloadObserver, Hub};

/// The Hugging Face repo of DINOv2 weights in candle's layout (`candle-examples`' dinov2).
pub const DINO_REPO: &str = "lmz/candle-dino-v2";

/// The published DINOv2 sizes alfa knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DinoSize {
    /// ViT-S/14: 12 blocks, width 384, 6 heads (AnomalyDINO's default).
    #[default]
    Small,
    /// ViT-B/14: 12 blocks, width 768, 12 heads.
    Base,
}

impl DinoSize {
    /// The name `--dino-model` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "vits14",
            Self::Base => "vitb14",
        }
    }

    /// The file in [`DINO_REPO`].
    pub fn hub_file(self) -> &'static str {
        match self {
            Self::Small => "dinov2_vits14.safetensors",
            Self::Base => "dinov2_vitb14.safetensors",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Small, Self::Base].into_iter().find(|s| s.name() == name)
    }
}

/// How to resolve `--dino-model`.
#[derive(Default, Clone)]
pub struct DinoRequest {
    /// `vits14`, `vitb14` (from the hub), a `.safetensors` file or a folder holding one;
    /// `None` for ViT-S/14.
    pub model: Option<String>,
    pub observer: Option<Arc<dyn DownloadObserver>>,
}

/// A resolved DINOv2 weights file.
#[derive(Debug, Clone)]
pub struct DinoFiles {
    /// What the user asked for, for messages and reports.
    pub name: String,
    pub weights: PathBuf,
}

impl DinoFiles {
    /// A key that changes whenever the weights change (reference-bank caches).
    pub fn identity(&self) -> String {
        format!("dinov2 {}", crate::files::file_identity(&self.weights))
    }
}

impl DinoRequest {
    pub fn resolve(&self) -> Result<DinoFiles, Dinov2Error> {
        let name = self.model.clone().unwrap_or_else(|| DinoSize::default().name().to_owned());
        let path = Path::new(&name);
        let weights = if path.is_file() {
            path.to_owned()
        } else if path.is_dir() {
            safetensors_in(path).ok_or_else(|| Dinov2Error::NotFound {
                model: name.clone(),
                reason: format!(
                    "the folder holds no .safetensors file (expected {} or {})",
                    DinoSize::Small.hub_file(),
                    DinoSize::Base.hub_file()
                ),
            })?
        } else if let Some(size) = DinoSize::from_name(&name) {
            let hub = Hub::new(self.observer.clone()).map_err(Dinov2Error::HubClient)?;
            hub.fetch(DINO_REPO, size.hub_file()).map_err(|f| Dinov2Error::Download(Box::new(f)))?
        } else {
            return Err(Dinov2Error::NotFound {
                model: name,
                reason: "it is neither a .safetensors file, a folder, nor vits14 / vitb14".into(),
            });
        };
        Ok(DinoFiles { name, weights })
    }
}

/// A known hub file name in `dir`, else its only `.safetensors` file.
fn safetensors_in(dir: &Path) -> Option<PathBuf> {
    let known = [DinoSize::Small, DinoSize::Base].map(|s| dir.join(s.hub_file()));
    if let Some(file) = known.into_iter().find(|p| p.is_file()) {
        return Some(file);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    (files.len() == 1).then(|| files.remove(0))
}

/// Depth, width and heads of the model a weights file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DinoShape {
    pub depth: usize,
    pub embed_dim: usize,
    pub num_heads: usize,
}

/// Every published DINOv2 model has heads of width 64 (S: 384 / 6, B: 768 / 12,
/// L: 1024 / 16, g: 1536 / 24); a file may say otherwise in its metadata (`num_heads`,
/// as the tiny test models do).
const HEAD_WIDTH: usize = 64;

/// The tensors of a weights file, served to the model by name.
pub(super) struct WeightsBackend {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// The first tensor the model asked for and the file could not give: candle's
    /// error is a string, this is what [`Dinov2Error`] names. Shared with the loader,
    /// since the `VarBuilder` owns the backend.
    problem: Arc<Mutex<Option<Dinov2Error>>>,
}

impl WeightsBackend {
    pub(super) fn open(path: &Path) -> Result<Self, Dinov2Error> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Dinov2Error::Weights { path: path.to_owned(), reason: e.to_string() })?;
        Ok(Self { path: path.to_owned(), tensors, problem: Arc::default() })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The model's depth and width from its tensors, its heads from the file's metadata
    /// or [`HEAD_WIDTH`].
    pub(super) fn shape(&self) -> Result<DinoShape, Dinov2Error> {
        let cls = self.tensors.get("cls_token").ok_or_else(|| self.missing("cls_token"))?;
        let embed_dim = *cls.dims().last().unwrap_or(&0);
        let depth = (0..).take_while(|i| self.tensors.contains_key(&format!("blocks.{i}.norm1.weight"))).count();
        if depth == 0 {
            return Err(self.missing("blocks.0.norm1.weight"));
        }
        let num_heads = match metadata_heads(&self.path)? {
            Some(heads) => heads,
            None => embed_dim / HEAD_WIDTH,
        };
        if num_heads == 0 || embed_dim % num_heads != 0 {
            return Err(Dinov2Error::Weights {
                path: self.path.clone(),
                reason: format!("width {embed_dim} does not split into {num_heads} attention heads"),
            });
        }
        Ok(DinoShape { depth, embed_dim, num_heads })
    }

    fn missing(&self, name: &str) -> Dinov2Error {
        Dinov2Error::MissingTensor { path: self.path.clone(), name: name.to_owned() }
    }

    /// Where the first tensor the file could not give is put while the model is built.
    pub(super) fn problem(&self) -> Arc<Mutex<Option<Dinov2Error>>> {
        self.problem.clone()
    }

    fn refuse(&self, problem: Dinov2Error) -> candle_core::Error {
        let message = problem.to_string();
        if let Ok(mut slot) = self.problem.lock() {
            slot.get_or_insert(problem);
        }
        candle_core::Error::Msg(message)
    }
}

/// The classifier the crate's model requires and feature extraction never runs.
fn unused_by_features(name: &str) -> bool {
    name.starts_with("head.")
}

impl SimpleBackend for WeightsBackend {
    fn get(&self, shape: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) if t.dims() == shape.dims() => t.to_dtype(dtype)?.to_device(dev),
            Some(t) => Err(self.refuse(Dinov2Error::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: shape.dims().to_vec(),
                found: t.dims().to_vec(),
            })),
            None if unused_by_features(name) => Tensor::zeros(shape, dtype, dev),
            None => Err(self.refuse(self.missing(name))),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(self.refuse(self.missing(name))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || unused_by_features(name)
    }
}

/// `num_heads` from the safetensors header's `__metadata__`, when the file has it.
fn metadata_heads(path: &Path) -> Result<Option<usize>, Dinov2Error> {
    use std::io::Read;
    let bad = |reason: String| Dinov2Error::Weights { path: path.to_owned(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    // The header is JSON; candle has already parsed the file, so this bound only
    // protects against reading a huge header twice.
    let len = u64::from_le_bytes(len).min(100 << 20) as usize;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(format!("its header: {e}")))?;
    let Some(heads) = header.get("__metadata__").and_then(|m| m.get("num_heads")) else {
        return Ok(None);
    };
    heads
        .as_str()
        .and_then(|h| h.parse().ok())
        .map(Some)
        .ok_or_else(|| bad(format!("metadata num_heads {heads} is not a whole number")))
}
