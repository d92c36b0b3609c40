//! DINOv2's forward on alfa's own CPU kernels (`ALFA_KERNELS=native`, the default on
//! the CPU): the crate's model spends most of its time in candle's generic attention
//! (a softmax of single-threaded whole-tensor passes) and unfused linear layers.
//!
//! A DINOv2 block is OpenCLIP's pre-norm transformer block with a layer scale `gamma`
//! on each branch: `x + gamma * (W a + b)` is `x + (diag(gamma) W) a + gamma b`, so the
//! scale is folded into the attention's output projection and the MLP's second layer at
//! load, and the blocks are CLIP's (`clip::model::blocks`: fused QKV, attention over
//! the heads in place, GELU fused into the first MLP layer, residuals fused into the
//! matmul tiles). What stays DINOv2's own is here: the patch embedding with its bias,
//! the class token and position embeddings, and the final norm. The blocks' layer norms
//! use CLIP's eps 1e-5 where DINOv2 uses 1e-6 (the final norm uses 1e-6); the MLP's GELU
//! is the exact one, as DINOv2's. `tests/dinov2.rs` holds both paths to timm.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, IndexOp, Tensor};

use super::{DinoShape, Dinov2Error, PATCH_SIZE};
use crate::clip::kernels::{Activation, Kernels, LayerNorm, Mask};
use crate::clip::model::{ResidualAttentionBlock, TensorSource, blocks};
use crate::clip::{ClipError, Precision};

/// DINOv2's final layer norm (`nn.LayerNorm(eps=1e-6)`).
const FINAL_NORM_EPS: f64 = 1e-6;

pub(super) struct NativeDinov2 {
    /// The patch embedding, a 14 x 14 convolution of stride 14, and its bias [1, D, 1, 1].
    patch_weight: Tensor,
    patch_bias: Tensor,
    /// The class token's embedding [1, 1, D] and the position embeddings [1, 1 + N, D].
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<ResidualAttentionBlock>,
    norm: LayerNorm,
}

/// DINOv2's tensors under the names `clip::model::blocks` asks for, with the layer
/// scales folded in.
struct FoldedBlocks<'a> {
    path: &'a Path,
    tensors: &'a HashMap<String, Tensor>,
}

impl FoldedBlocks<'_> {
    fn get(&self, name: &str) -> Result<&Tensor, ClipError> {
        self.tensors.get(name).ok_or_else(|| ClipError::MissingTensor { path: self.path.to_owned(), name: name.to_owned() })
    }

    /// `name` scaled by the layer scale `gamma` along its first (output) dimension.
    fn scaled(&self, name: &str, gamma: &str) -> Result<Tensor, ClipError> {
        let tensor = self.get(name)?;
        let gamma = self.get(gamma)?;
        let gamma = if tensor.rank() == 2 { gamma.unsqueeze(1)? } else { gamma.clone() };
        Ok(tensor.broadcast_mul(&gamma)?)
    }
}

impl TensorSource for FoldedBlocks<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError> {
        let missing = || ClipError::MissingTensor { path: self.path.to_owned(), name: name.to_owned() };
        let rest = name.strip_prefix("dino.resblocks.").ok_or_else(missing)?;
        let (block, part) = rest.split_once('.').ok_or_else(missing)?;
        let at = |n: &str| format!("blocks.{block}.{n}");
        let tensor = match part {
            "ln_1.weight" => self.get(&at("norm1.weight"))?.clone(),
            "ln_1.bias" => self.get(&at("norm1.bias"))?.clone(),
            "ln_2.weight" => self.get(&at("norm2.weight"))?.clone(),
            "ln_2.bias" => self.get(&at("norm2.bias"))?.clone(),
            "attn.in_proj_weight" => self.get(&at("attn.qkv.weight"))?.clone(),
            "attn.in_proj_bias" => self.get(&at("attn.qkv.bias"))?.clone(),
            "attn.out_proj.weight" => self.scaled(&at("attn.proj.weight"), &at("ls1.gamma"))?,
            "attn.out_proj.bias" => self.scaled(&at("attn.proj.bias"), &at("ls1.gamma"))?,
            "mlp.c_fc.weight" => self.get(&at("mlp.fc1.weight"))?.clone(),
            "mlp.c_fc.bias" => self.get(&at("mlp.fc1.bias"))?.clone(),
            "mlp.c_proj.weight" => self.scaled(&at("mlp.fc2.weight"), &at("ls2.gamma"))?,
            "mlp.c_proj.bias" => self.scaled(&at("mlp.fc2.bias"), &at("ls2.gamma"))?,
            _ => return Err(missing()),
        };
        crate::clip::weights::expect_shape(&tensor, shape, self.path, name)?;
        Ok(tensor)
    }
}

impl NativeDinov2 {
    /// From the weights file's tensors (already checked by the crate's model: this
    /// runs after it was built from them).
    pub(super) fn new(path: &Path, tensors: &HashMap<String, Tensor>, shape: DinoShape) -> Result<Self, Dinov2Error> {
        // Files may store float16 or bfloat16; the kernels compute in f32.
        let tensors = tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
        let tensors = &tensors;
        let get = |name: &str| {
            tensors.get(name).cloned().ok_or_else(|| Dinov2Error::MissingTensor { path: path.to_owned(), name: name.to_owned() })
        };
        let width = shape.embed_dim;
        let mlp_width = get("blocks.0.mlp.fc1.weight")?.dim(0)?;
        let source = FoldedBlocks { path, tensors };
        let blocks = blocks(&source, "dino", shape.depth, width, shape.num_heads, mlp_width, Activation::Gelu, Precision::F32, Kernels::Native)
            .map_err(|e| Dinov2Error::Weights { path: path.to_owned(), reason: e.to_string() })?;
        Ok(Self {
            patch_weight: get("patch_embed.proj.weight")?,
            patch_bias: get("patch_embed.proj.bias")?.reshape((1, width, 1, 1))?,
            cls_token: get("cls_token")?,
            pos_embed: get("pos_embed")?,
            blocks,
            norm: LayerNorm::new(get("norm.weight")?, get("norm.bias")?, FINAL_NORM_EPS, Kernels::Native),
        })
    }

    /// The last block's patch tokens after the final norm [N, D] of `pixels` [1, 3, 518, 518].
    pub(super) fn patch_tokens(&self, pixels: &Tensor) -> Result<Tensor, Dinov2Error> {
        let patches = pixels.conv2d(&self.patch_weight, 0, PATCH_SIZE, 1, 1)?.broadcast_add(&self.patch_bias)?; // [1, D, 37, 37]
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [1, N, D]
        let mut x = Tensor::cat(&[&self.cls_token, &patches], 1)?.broadcast_add(&self.pos_embed)?.contiguous()?;
        for block in &self.blocks {
            x = block.forward(&x, Mask::Full)?;
        }
        Ok(self.norm.forward(&x.i((0, 1..))?)?)
    }
}
