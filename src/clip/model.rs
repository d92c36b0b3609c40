//! OpenCLIP's ViT image tower and transformer text tower on candle.
//!
//! Plain structs with `forward`-style methods, weights fetched by OpenCLIP's names.
//! Beyond the pooled embedding, the towers expose what the detectors need so that
//! none of them re-implements the transformer: the tokens after every block, the
//! last block's attention values, a forward over a subset of patch tokens (window
//! features), and the blocks themselves (AnoVL's V-V path runs beside them).

use candle_core::{D, DType, Device, IndexOp, Tensor};

use super::{ClipError, Precision};
use super::kernels::{self, Epilogue, LayerNorm, LinearWeight, Mask};
pub use super::kernels::{Activation, Kernels};
use super::config::{ModelConfig, TextConfig, VisionConfig};

/// OpenCLIP uses `nn.LayerNorm`'s default epsilon everywhere.
const LN_EPS: f64 = 1e-5;

/// Where the model's parameters come from: a checkpoint, or random values of the
/// right shapes for benchmarks. The model asks by OpenCLIP name and exact shape.
pub trait TensorSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError>;
}

impl TensorSource for super::weights::Weights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError> {
        self.get(name, shape)
    }
}

/// Random parameters of the real shapes (timings only; features are meaningless).
pub struct RandomWeights {
    pub device: Device,
}

impl TensorSource for RandomWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError> {
        if name == "logit_scale" {
            return Ok(Tensor::new(100f32.ln(), &self.device)?);
        }
        let t = if name.ends_with("bias") {
            Tensor::zeros(shape, DType::F32, &self.device)
        } else if name.contains("ln_") {
            Tensor::ones(shape, DType::F32, &self.device)
        } else {
            Tensor::randn(0f32, 0.02, shape, &self.device)
        };
        Ok(t?)
    }
}

/// A LayerNorm whose weights are in `dtype`, the type of the tokens it normalises
/// (candle's fused layer norm wants all three alike). In bf16 and f16 it still
/// computes the mean and variance in f32, on the CPU and in CUDA's kernel alike.
fn layer_norm(src: &dyn TensorSource, prefix: &str, width: usize, dtype: DType, kernels: Kernels) -> Result<LayerNorm, ClipError> {
    Ok(LayerNorm::new(
        src.tensor(&format!("{prefix}.weight"), &[width])?.to_dtype(dtype)?,
        src.tensor(&format!("{prefix}.bias"), &[width])?.to_dtype(dtype)?,
        LN_EPS,
        kernels,
    ))
}

fn linear(
    src: &dyn TensorSource,
    prefix: &str,
    out_dim: usize,
    in_dim: usize,
    precision: Precision,
    kernels: Kernels,
) -> Result<Dense, ClipError> {
    Ok(Dense::new(
        &src.tensor(&format!("{prefix}.weight"), &[out_dim, in_dim])?,
        Some(src.tensor(&format!("{prefix}.bias"), &[out_dim])?),
        precision,
        kernels,
    )?)
}

/// `x W^T + b` over all leading dimensions as one 2-D matmul (the fast kernel),
/// with the weight transposed once at load time.
pub struct Dense {
    /// [in, out]
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Dense {
    /// From a PyTorch-layout weight [out, in].
    fn new(weight: &Tensor, bias: Option<Tensor>, precision: Precision, kernels: Kernels) -> candle_core::Result<Self> {
        Self::from_transposed(weight.t()?.contiguous()?, bias, precision, kernels)
    }

    /// From a weight already laid out [in, out] (`visual.proj`, `text_projection`).
    fn from_transposed(
        weight_t: Tensor,
        bias: Option<Tensor>,
        precision: Precision,
        kernels: Kernels,
    ) -> candle_core::Result<Self> {
        let weight = LinearWeight::new(weight_t, precision, kernels)?;
        let bias = bias.map(|b| b.to_dtype(weight.dtype())).transpose()?;
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_then(x, Epilogue::None)
    }

    /// `forward`, then an activation or a residual add (fused by the native CPU kernels).
    fn forward_then(&self, x: &Tensor, epilogue: Epilogue) -> candle_core::Result<Tensor> {
        kernels::linear(x, &self.weight, self.bias.as_ref(), epilogue)
    }
}

/// `nn.MultiheadAttention` with its fused `in_proj` as OpenCLIP stores it.
pub struct Attention {
    in_proj: Dense,
    /// The value third of `in_proj`, kept apart so values alone cost one matmul.
    value_proj: Dense,
    out_proj: Dense,
    heads: usize,
    head_dim: usize,
    kernels: Kernels,
}

impl Attention {
    fn new(
        src: &dyn TensorSource,
        prefix: &str,
        width: usize,
        heads: usize,
        precision: Precision,
        kernels: Kernels,
    ) -> Result<Self, ClipError> {
        let weight = src.tensor(&format!("{prefix}.in_proj_weight"), &[3 * width, width])?;
        let bias = src.tensor(&format!("{prefix}.in_proj_bias"), &[3 * width])?;
        let value_proj = Dense::new(
            &weight.narrow(0, 2 * width, width)?,
            Some(bias.narrow(0, 2 * width, width)?.contiguous()?),
            precision,
            kernels,
        )?;
        Ok(Self {
            in_proj: Dense::new(&weight, Some(bias), precision, kernels)?,
            value_proj,
            out_proj: linear(src, &format!("{prefix}.out_proj"), width, width, precision, kernels)?,
            heads,
            head_dim: width / heads,
            kernels,
        })
    }

    /// The fused query/key/value projection `x W_in + b_in` [B, L, 3D].
    fn qkv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.in_proj.forward(x)
    }

    /// `residual` [B, queries, D] plus the attention of the first `queries` tokens
    /// over `qkv` [B, L, 3D] through the output projection.
    fn attend(&self, qkv: &Tensor, queries: usize, mask: Mask, residual: &Tensor) -> candle_core::Result<Tensor> {
        let attended = kernels::attention(qkv, self.heads, queries, mask, self.kernels)?;
        self.out_proj.forward_then(&attended, Epilogue::Residual(residual))
    }

    /// The value vectors `ln_1(x) W_v + b_v` of every token, all heads concatenated [B, L, D].
    pub fn values(&self, normed: &Tensor) -> candle_core::Result<Tensor> {
        self.value_proj.forward(normed)
    }

    /// Attention with queries and keys both replaced by the values (`softmax(V V^T / sqrt(d)) V`
    /// per head), then the output projection: the V-V attention of CLIP Surgery / AnoVL.
    pub fn value_value(&self, values: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, d) = values.dims3()?;
        let v = values
            .reshape((b, l, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let logits = (v.matmul(&v.t()?)? * scale)?;
        let attn = kernels::softmax_last_dim(&logits)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&out)
    }

    pub fn out_proj(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.out_proj.forward(x)
    }
}

/// OpenCLIP's `ResidualAttentionBlock` (pre-norm attention and MLP).
pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    c_fc: Dense,
    c_proj: Dense,
    act: Activation,
}

impl ResidualAttentionBlock {
    fn new(
        src: &dyn TensorSource,
        prefix: &str,
        width: usize,
        heads: usize,
        mlp_width: usize,
        act: Activation,
        precision: Precision,
        kernels: Kernels,
    ) -> Result<Self, ClipError> {
        let dtype = precision.dtype(kernels);
        Ok(Self {
            ln_1: layer_norm(src, &format!("{prefix}.ln_1"), width, dtype, kernels)?,
            attn: Attention::new(src, &format!("{prefix}.attn"), width, heads, precision, kernels)?,
            ln_2: layer_norm(src, &format!("{prefix}.ln_2"), width, dtype, kernels)?,
            c_fc: linear(src, &format!("{prefix}.mlp.c_fc"), mlp_width, width, precision, kernels)?,
            c_proj: linear(src, &format!("{prefix}.mlp.c_proj"), width, mlp_width, precision, kernels)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Mask) -> candle_core::Result<Tensor> {
        self.forward_from_qkv(x, &self.qkv(x)?, x.dim(1)?, mask)
    }

    /// The fused query/key/value projection of `ln_1(x)` [B, L, 3W]: per token, so
    /// tokens shared by many sequences can be projected once (see `forward_windows`).
    fn qkv(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.attn.qkv(&self.ln_1.forward(x)?)
    }

    /// The outputs of the first `queries` tokens [B, queries, W] of the block whose
    /// input is `x` [B, L, W] and whose `qkv` [B, L, 3W] is already computed.
    fn forward_from_qkv(&self, x: &Tensor, qkv: &Tensor, queries: usize, mask: Mask) -> candle_core::Result<Tensor> {
        self.mlp_residual(&self.attn.attend(qkv, queries, mask, &x.narrow(1, 0, queries)?)?)
    }

    /// The type the block's tokens are in: f32, or bf16 / f16 on the generic kernels.
    pub fn dtype(&self) -> DType {
        self.c_fc.weight.dtype()
    }

    /// `x + mlp(ln_2(x))`.
    fn mlp_residual(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.c_fc.forward_then(&self.ln_2.forward(x)?, Epilogue::Activation(self.act))?;
        self.c_proj.forward_then(&hidden, Epilogue::Residual(x))
    }
}

/// The values [B, L, W], the last third of a fused `qkv` [B, L, 3W].
fn values_of(qkv: &Tensor) -> candle_core::Result<Tensor> {
    let width = qkv.dim(2)? / 3;
    qkv.narrow(2, 2 * width, width)?.contiguous()
}

/// `layers` pre-norm transformer blocks `{prefix}.resblocks.{i}` in OpenCLIP's names
/// (DINOv2's native forward serves its blocks under these names too).
pub(crate) fn blocks(
    src: &dyn TensorSource,
    prefix: &str,
    layers: usize,
    width: usize,
    heads: usize,
    mlp_width: usize,
    act: Activation,
    precision: Precision,
    kernels: Kernels,
) -> Result<Vec<ResidualAttentionBlock>, ClipError> {
    (0..layers)
        .map(|i| {
            ResidualAttentionBlock::new(
                src,
                &format!("{prefix}.resblocks.{i}"),
                width,
                heads,
                mlp_width,
                act,
                precision,
                kernels,
            )
        })
        .collect()
}

/// What a detailed vision forward should keep besides the pooled feature.
#[derive(Debug, Clone, Copy, Default)]
pub struct VisionCapture {
    /// The tokens entering the first block (after `ln_pre`) and after every block.
    pub layers: bool,
    /// The last block's attention values [B, L, W].
    pub last_values: bool,
    /// Only the pooled feature is wanted: the last block computes the class token's
    /// output alone (its keys and values still come from every token), and `tokens`
    /// (and the last of `layers`) is that class token [B, 1, W]. Same pooled feature
    /// for a twelfth less work per patch token in that block.
    pub class_only: bool,
}

pub struct VisionOutput {
    /// `ln_post(class token) @ proj`, unnormalised [B, E].
    pub pooled: Tensor,
    /// The tokens leaving the last block, before `ln_post` [B, L, W] ([B, 1, W] with
    /// `class_only`).
    pub tokens: Tensor,
    /// `layers[0]`: tokens entering block 0 (after `ln_pre`); `layers[i + 1]`: after
    /// block i. Empty unless asked for.
    pub layers: Vec<Tensor>,
    pub last_values: Option<Tensor>,
}

/// OpenCLIP's `VisionTransformer` (class-token pooling, `ln_pre`, `ln_post`, `proj`).
pub struct VisionTransformer {
    /// `conv1` as a linear map of flattened patches: a stride-P convolution is
    /// exactly this matmul, and the matmul is the faster kernel.
    patch_embed: Dense,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    blocks: Vec<ResidualAttentionBlock>,
    ln_post: LayerNorm,
    proj: Dense,
    patch_size: usize,
    grid: usize,
    width: usize,
    precision: Precision,
    /// The type of the tokens from the patch embedding through the last block: f32,
    /// or on the generic kernels (every GPU) bf16 or f16. Everything the tower returns
    /// is f32 (`ln_post` and `proj` run in f32), and every tensor it takes is converted
    /// on entry: the text tower, the aligner and the maps never see half precision.
    dtype: DType,
}

impl VisionTransformer {
    /// `precision` applies to the transformer: on the native CPU kernels to its
    /// linear layers (the patch embedding and the final projection, a sliver of the
    /// work, stay f32), on the generic kernels to all of it from the patch embedding
    /// on (see `dtype`).
    pub fn new(
        src: &dyn TensorSource,
        cfg: &VisionConfig,
        embed_dim: usize,
        act: Activation,
        precision: Precision,
        kernels: Kernels,
    ) -> Result<Self, ClipError> {
        let (w, p, g) = (cfg.width, cfg.patch_size, cfg.grid());
        let conv = src.tensor("visual.conv1.weight", &[w, 3, p, p])?;
        precision.check(conv.device(), kernels)?;
        let dtype = precision.dtype(kernels);
        let embed_precision = if dtype == DType::F32 { Precision::F32 } else { precision };
        Ok(Self {
            patch_embed: Dense::new(&conv.reshape((w, 3 * p * p))?, None, embed_precision, kernels)?,
            class_embedding: src.tensor("visual.class_embedding", &[w])?.to_dtype(dtype)?,
            positional_embedding: src.tensor("visual.positional_embedding", &[1 + g * g, w])?.to_dtype(dtype)?,
            ln_pre: layer_norm(src, "visual.ln_pre", w, dtype, kernels)?,
            blocks: blocks(src, "visual.transformer", cfg.layers, w, cfg.heads(), cfg.mlp_width(), act, precision, kernels)?,
            ln_post: layer_norm(src, "visual.ln_post", w, DType::F32, kernels)?,
            proj: Dense::from_transposed(src.tensor("visual.proj", &[w, embed_dim])?, None, Precision::F32, kernels)?,
            patch_size: p,
            grid: g,
            width: w,
            precision,
            dtype,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The type of the transformer's tokens (see the field).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn heads(&self) -> usize {
        self.blocks.first().map_or(1, |b| b.attn.heads)
    }

    pub fn grid(&self) -> usize {
        self.grid
    }
    pub fn width(&self) -> usize {
        self.width
    }
    pub fn image_size(&self) -> usize {
        self.grid * self.patch_size
    }
    pub fn blocks(&self) -> &[ResidualAttentionBlock] {
        &self.blocks
    }

    /// Patch tokens with their position embeddings, after the class token (with its
    /// own), before `ln_pre`: [B, 1 + G*G, W] in f32 (computed in the tower's type).
    /// Index `1 + p` is patch `p` (row-major).
    pub fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let pixels = pixels.to_dtype(self.dtype)?;
        let (b, c, h, w) = pixels.dims4()?;
        let (p, g) = (self.patch_size, self.grid);
        if c != 3 || h != g * p || w != g * p {
            candle_core::bail!("expected pixels [B, 3, {s}, {s}], got {:?}", pixels.dims(), s = g * p);
        }
        let patches = pixels
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))? // [B, gy, gx, 3, py, px]
            .reshape((b, g * g, 3 * p * p))?;
        let patches = self.patch_embed.forward(&patches)?;
        let class = self
            .class_embedding
            .reshape((1, 1, self.width))?
            .broadcast_as((b, 1, self.width))?;
        Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.positional_embedding)?.to_dtype(DType::F32)
    }

    /// `ln_pre` and every block over embedded tokens: the tokens leaving the last
    /// block, the captured layers and values, all f32.
    pub fn forward_embedded(&self, tokens: &Tensor, capture: VisionCapture) -> candle_core::Result<(Tensor, Vec<Tensor>, Option<Tensor>)> {
        let mut x = self.ln_pre.forward(&tokens.to_dtype(self.dtype)?)?;
        let mut layers = Vec::new();
        if capture.layers {
            layers.push(x.to_dtype(DType::F32)?);
        }
        let (last, inner) = self.blocks.split_last().expect("a ViT has at least one block");
        for block in inner {
            x = block.forward(&x, Mask::Full)?;
            if capture.layers {
                layers.push(x.to_dtype(DType::F32)?);
            }
        }
        let qkv = last.qkv(&x)?;
        let last_values = capture.last_values.then(|| values_of(&qkv)?.to_dtype(DType::F32)).transpose()?;
        let queries = if capture.class_only { 1 } else { x.dim(1)? };
        let x = last.forward_from_qkv(&x, &qkv, queries, Mask::Full)?.to_dtype(DType::F32)?;
        if capture.layers {
            layers.push(x.clone());
        }
        Ok((x, layers, last_values))
    }

    /// `ln_post` then `proj` on tokens [B, L, W] -> [B, L, E] (or [B, W] -> [B, E]).
    pub fn project(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        self.proj.forward(&self.ln_post(tokens)?)
    }

    /// `ln_post` alone, in f32: OpenCLIP's `output_tokens`, the patch features WinCLIP+ stores.
    pub fn ln_post(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        self.ln_post.forward(&tokens.to_dtype(DType::F32)?)
    }

    /// Attention values taken into the joint space: `ln_post(out_proj(v)) @ proj` [B, L, E]
    /// (`out_proj` in the tower's type, the rest in f32).
    pub fn project_values(&self, values: &Tensor) -> candle_core::Result<Tensor> {
        let last = self.blocks.last().expect("a ViT has at least one block");
        self.project(&last.attn.out_proj(&values.to_dtype(self.dtype)?)?)
    }

    fn pool(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        self.project(&tokens.i((.., 0, ..))?.contiguous()?)
    }

    /// Image embeddings [B, E] (unnormalised) of preprocessed pixels [B, 3, S, S].
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_detailed(pixels, VisionCapture { class_only: true, ..Default::default() })?.pooled)
    }

    pub fn forward_detailed(&self, pixels: &Tensor, capture: VisionCapture) -> candle_core::Result<VisionOutput> {
        let (tokens, layers, last_values) = self.forward_embedded(&self.embed(pixels)?, capture)?;
        Ok(VisionOutput {
            pooled: self.pool(&tokens)?,
            tokens,
            layers,
            last_values,
        })
    }

    /// Window features (WinCLIP): for each window, the class token and only that
    /// window's patch tokens (each with its own position embedding) go through the
    /// transformer. `embedded` is `embed`'s output [B, 1 + G*G, W]; `windows` [K, n]
    /// holds row-major patch indices (u32). Returns the pooled features [B, K, E],
    /// unnormalised, and `with_values` the last block's values [B, K, 1 + n, W]
    /// (class token first), both f32. All B*K sequences run as one batch: the caller chunks
    /// `windows` to bound memory. Only the pooled class token is needed, so the last
    /// block computes the class token's output alone (a twelfth of the work per
    /// patch token in that block). The first block's input tokens are the embedded
    /// tokens themselves, the same in every window (which overlap), so their
    /// `ln_pre`, `ln_1` and q/k/v are computed once per image token and gathered.
    pub fn forward_windows(
        &self,
        embedded: &Tensor,
        windows: &Tensor,
        with_values: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let embedded = embedded.to_dtype(self.dtype)?;
        let (b, _, w) = embedded.dims3()?;
        let (k, n) = windows.dims2()?;
        let device = windows.device();
        // Token index 0 is the class token; patch p sits at 1 + p.
        let class = Tensor::zeros((k, 1), DType::U32, device)?;
        let patch = (windows.to_dtype(DType::U32)? + 1.0)?;
        let index = Tensor::cat(&[&class, &patch], 1)?.flatten_all()?;
        let per_window = |t: &Tensor| -> candle_core::Result<Tensor> {
            let channels = t.dim(2)?;
            t.index_select(&index, 1)?.reshape((b * k, 1 + n, channels))
        };
        let normed = self.ln_pre.forward(&embedded)?;
        let first = self.blocks.first().expect("a ViT has at least one block");
        let first_qkv = per_window(&first.qkv(&normed)?)?;
        let mut x = per_window(&normed)?;
        let last = self.blocks.len() - 1;
        let mut values = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let qkv = if i == 0 { first_qkv.clone() } else { block.qkv(&x)? };
            if i == last {
                values = with_values.then(|| values_of(&qkv)?.reshape((b, k, 1 + n, w))?.to_dtype(DType::F32)).transpose()?;
                x = block.forward_from_qkv(&x, &qkv, 1, Mask::Full)?;
            } else {
                x = block.forward_from_qkv(&x, &qkv, 1 + n, Mask::Full)?;
            }
        }
        Ok((self.pool(&x)?.reshape((b, k, ()))?, values))
    }
}

/// See `TextTransformer::forward`.
const TOKENS_PER_CHUNK: usize = 2048;

/// OpenCLIP's text transformer: causal, pooled at the end-of-text token.
pub struct TextTransformer {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    blocks: Vec<ResidualAttentionBlock>,
    ln_final: LayerNorm,
    text_projection: Dense,
    context_length: usize,
}

impl TextTransformer {
    pub fn new(
        src: &dyn TensorSource,
        cfg: &TextConfig,
        embed_dim: usize,
        act: Activation,
        kernels: Kernels,
    ) -> Result<Self, ClipError> {
        let w = cfg.width;
        Ok(Self {
            token_embedding: src.tensor("token_embedding.weight", &[cfg.vocab_size, w])?,
            positional_embedding: src.tensor("positional_embedding", &[cfg.context_length, w])?,
            blocks: blocks(src, "transformer", cfg.layers, w, cfg.heads, cfg.mlp_width(), act, Precision::F32, kernels)?,
            ln_final: layer_norm(src, "ln_final", w, DType::F32, kernels)?,
            text_projection: Dense::from_transposed(
                src.tensor("text_projection", &[w, embed_dim])?,
                None,
                Precision::F32,
                kernels,
            )?,
            context_length: cfg.context_length,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Text embeddings [T, E] (unnormalised) of token ids [T, L] (u32), L <= context.
    /// L may be shorter than the context: the causal mask makes the end-of-text
    /// feature independent of the padding after it, so batches are cut to their
    /// longest prompt.
    /// Large batches run in chunks of about `TOKENS_PER_CHUNK` tokens: the MLP's
    /// activations then stay small enough for the allocator to reuse (a 150-prompt
    /// batch at 77 tokens would map and unmap ~120 MB per layer).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (t, l) = ids.dims2()?;
        let per_chunk = (TOKENS_PER_CHUNK / l.max(1)).max(1);
        if t <= per_chunk {
            return Ok(self.forward_detailed(ids, false)?.0);
        }
        let chunks = (0..t)
            .step_by(per_chunk)
            .map(|start| Ok(self.forward_detailed(&ids.narrow(0, start, per_chunk.min(t - start))?, false)?.0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&chunks, 0)
    }

    /// `forward`, also returning the input tokens and the tokens after every block
    /// when `keep_layers` is set.
    pub fn forward_detailed(&self, ids: &Tensor, keep_layers: bool) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let (t, l) = ids.dims2()?;
        if l > self.context_length {
            candle_core::bail!("{l} tokens exceed the context length {}", self.context_length);
        }
        let ids = ids.to_dtype(DType::U32)?;
        let mut x = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((t, l, ()))?
            .broadcast_add(&self.positional_embedding.narrow(0, 0, l)?)?;
        let mut layers = Vec::new();
        if keep_layers {
            layers.push(x.clone());
        }
        for block in &self.blocks {
            x = block.forward(&x, Mask::Causal)?;
            if keep_layers {
                layers.push(x.clone());
            }
        }
        let x = self.ln_final.forward(&x)?;
        // The end-of-text token has the largest id in CLIP's vocabulary.
        let eot = ids.argmax(D::Minus1)?; // [T]
        let pooled = x
            .gather(&eot.reshape((t, 1, 1))?.broadcast_as((t, 1, x.dim(2)?))?.contiguous()?, 1)?
            .squeeze(1)?;
        Ok((self.text_projection.forward(&pooled)?, layers))
    }
}

/// The two towers and CLIP's temperature.
pub struct ClipModel {
    pub vision: VisionTransformer,
    pub text: TextTransformer,
    /// `exp(logit_scale)`: 100 for the released models.
    pub logit_scale: f32,
    /// The kernels the towers run on (generic on every device but the CPU).
    pub kernels: Kernels,
}

impl ClipModel {
    /// `precision` is the image tower's (see `VisionTransformer::new`); the text
    /// tower is always f32, so cached text features do not depend on it. `kernels`
    /// applies on the CPU; on other devices the towers run the generic kernels.
    pub fn new(
        src: &dyn TensorSource,
        cfg: &ModelConfig,
        precision: Precision,
        kernels: Kernels,
    ) -> Result<Self, ClipError> {
        // An ALFA_CPU the kernels cannot honour stops here, before any of them runs.
        super::CpuFamily::from_env()?;
        let act = if cfg.quick_gelu { Activation::QuickGelu } else { Activation::Gelu };
        let logit_scale = src.tensor("logit_scale", &[])?;
        let kernels = kernels.on(logit_scale.device());
        let logit_scale = logit_scale.to_scalar::<f32>()?.exp();
        Ok(Self {
            vision: VisionTransformer::new(src, &cfg.vision_cfg, cfg.embed_dim, act, precision, kernels)?,
            text: TextTransformer::new(src, &cfg.text_cfg, cfg.embed_dim, act, kernels)?,
            logit_scale,
            kernels,
        })
    }
}
