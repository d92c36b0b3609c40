//! Reading OpenCLIP state dicts: safetensors, or PyTorch pickles (`.bin`, `.pt`, `.pth`).
//!
//! Tensors keep OpenCLIP's own names. Every tensor is converted to f32 on load:
//! released checkpoints mix f16 and f32, and parity with the reference is measured in f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::ClipError;

/// A state dict: OpenCLIP tensor name to tensor, with the file it came from for errors.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
}

impl Weights {
    /// Loads a checkpoint, choosing the reader by extension.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ClipError> {
        let bad = |reason: String| ClipError::Weights {
            path: path.to_owned(),
            reason,
        };
        if !path.is_file() {
            return Err(bad("the file does not exist".into()));
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let raw: Vec<(String, Tensor)> = match ext.as_str() {
            "safetensors" => candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?
                .into_iter()
                .collect(),
            "bin" | "pt" | "pth" => read_pickle(path).map_err(bad)?,
            _ => {
                return Err(bad(
                    "unknown weights format: expected .safetensors, .bin, .pt or .pth".into(),
                ));
            }
        };
        if raw.is_empty() {
            return Err(bad("the file holds no tensors".into()));
        }
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, tensor) in raw {
            // Checkpoints saved from DistributedDataParallel prefix every name.
            let name = name.strip_prefix("module.").map(str::to_owned).unwrap_or(name);
            let tensor = tensor
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(device))
                .map_err(|e| bad(format!("tensor `{name}` could not be converted ({e})")))?;
            tensors.insert(name, tensor);
        }
        Ok(Self {
            tensors,
            source: path.to_owned(),
        })
    }

    /// Wraps tensors made in memory (random weights for benchmarks, tests).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: impl Into<PathBuf>) -> Self {
        Self {
            tensors,
            source: source.into(),
        }
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| ClipError::MissingTensor {
                path: self.source.clone(),
                name: name.to_owned(),
            })?;
        expect_shape(tensor, shape, &self.source, name)?;
        Ok(tensor.clone())
    }

    /// The tensor `name` if present (optional parameters such as `logit_scale`).
    pub fn get_optional(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// PyTorch pickles come as a bare state dict or wrapped in `{"state_dict": ...}`
/// (OpenCLIP training checkpoints).
fn read_pickle(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    let describe = |e: candle_core::Error| format!("not a readable PyTorch checkpoint ({e})");
    let bare = candle_core::pickle::read_all(path).map_err(describe)?;
    if !bare.is_empty() {
        return Ok(bare);
    }
    candle_core::pickle::read_all_with_key(path, Some("state_dict")).map_err(describe)
}

/// Refuses `tensor` (`name` in the weights file `path`) unless it has exactly `shape`.
pub fn expect_shape(tensor: &Tensor, shape: &[usize], path: &Path, name: &str) -> Result<(), ClipError> {
    if tensor.dims() == shape {
        return Ok(());
    }
    Err(ClipError::ShapeMismatch { path: path.to_owned(), name: name.to_owned(), expected: shape.to_vec(), found: tensor.dims().to_vec() })
}
