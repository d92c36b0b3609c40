//! CPU kernels where candle's generic ones leave most of the machine idle. Other
//! devices use candle's kernels, and so does the CPU with [`Kernels::Generic`]
//! (`ALFA_KERNELS=generic`): the path CUDA and Metal run, testable without a GPU.
//!
//! - Activations: candle's run on one thread; these run on all cores. The exact GELU
//!   uses Abramowitz & Stegun 7.1.26 for erf (|error| < 1.5e-7, the approximation
//!   PyTorch's vectorised CPU erf uses).
//! - Linear layers: the bias, the activation or the residual add fused into the
//!   matmul's pass over the output (see `linear`).
//! - Attention: candle's batched matmul calls `gemm` once per (sequence, head), one
//!   after another, so short sequences (365 windows of 5 or 10 tokens, prompts of 20)
//!   cost thousands of serial calls plus the copies that split the heads. This
//!   kernel reads the heads in place from `in_proj`'s output and runs the
//!   (sequence, head) pairs in parallel, each as two single-threaded `gemm` calls.

use super::cpu::CpuFamily;
use super::packed::{PackedWeight, TileFinish};
use super::{ClipError, Precision};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Which implementation runs the towers' linear layers, attention and activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// This module's CPU kernels (fused linear layers, the packed AVX-512 or AVX2
    /// matmul, parallel attention and activations) on the CPU, in the instructions of
    /// the [`CpuFamily`] this process runs; candle's on other devices.
    #[default]
    Native,
    /// candle's own operations only (its matmul, `gelu_erf`, softmax, ...): what
    /// CUDA and Metal run, selectable on the CPU to test that path without a GPU.
    Generic,
}

impl Kernels {
    /// The environment variable the CLI and the app read the choice from.
    pub const ENV: &'static str = "ALFA_KERNELS";
    pub const ALL: [Self; 2] = [Self::Native, Self::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    pub fn parse(value: &str) -> Result<Self, ClipError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == value.trim())
            .ok_or_else(|| ClipError::Kernels { value: value.to_owned() })
    }

    /// `ALFA_KERNELS` (`native` when unset), read once per process.
    pub fn from_env() -> Result<Self, ClipError> {
        static CHOICE: std::sync::OnceLock<Result<Kernels, String>> = std::sync::OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var(Self::ENV) {
                Err(std::env::VarError::NotPresent) => Ok(Self::Native),
                Err(std::env::VarError::NotUnicode(v)) => Err(v.to_string_lossy().into_owned()),
                Ok(v) if v.is_empty() => Ok(Self::Native),
                Ok(v) => Self::parse(&v).map_err(|_| v),
            })
            .clone()
            .map_err(|value| ClipError::Kernels { value })
    }

    /// What runs on `device`: the native kernels exist for the CPU only.
    pub fn on(self, device: &Device) -> Self {
        if device.is_cpu() { self } else { Self::Generic }
    }
}

/// Defines `$name`, which runs `$portable` (an `#[inline(always)]` function) compiled
/// for the vector unit of the active [`CpuFamily`]: the default build targets plain
/// x86-64, whose 128-bit vectors would leave AVX-512 CPUs a quarter used. `$portable`
/// takes `const FUSED: bool`, whether it may use fused multiply-adds ([`mul_add`]).
macro_rules! widest_vectors {
    ($name:ident => $portable:ident($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $portable::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $portable::<true>($($arg),*)
                }
                match CpuFamily::active() {
                    // SAFETY: `active` is a family the CPU has (`is_available`): AVX-512F.
                    CpuFamily::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above: AVX2 and FMA.
                    CpuFamily::Avx2 => return unsafe { avx2($($arg),*) },
                    CpuFamily::Portable => {}
                }
            }
            $portable::<FMA_IN_BASELINE>($($arg),*)
        }
    };
}

/// Whether the build's baseline has fused multiply-adds: aarch64 always; x86-64 when
/// built for a CPU with FMA (`-C target-cpu=native`), not by default.
const FMA_IN_BASELINE: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// `a * b + c`, in one rounding and one instruction when `FUSED` (code compiled with
/// FMA: Rust never fuses a multiply and an add on its own, so each step of a
/// polynomial would be two instructions); a multiply and an add otherwise, where
/// `f32::mul_add` would be a call to libm's `fmaf` per element, which no loop
/// vectorises.
#[inline(always)]
fn mul_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, as `nn.GELU()`: the LAION models.
    Gelu,
    /// `x * sigmoid(1.702 x)`: OpenAI's weights (`-quickgelu` configs).
    QuickGelu,
}

impl Activation {
    #[inline(always)]
    fn apply<const FUSED: bool>(self, x: f32) -> f32 {
        match self {
            Self::Gelu => 0.5 * x * (1.0 + erf::<FUSED>(x * std::f32::consts::FRAC_1_SQRT_2)),
            Self::QuickGelu => x / (1.0 + exp::<FUSED>(-1.702 * x)),
        }
    }

    /// Every element of `values` in place, on all cores, with the widest vectors.
    fn apply_in_place(self, values: &mut [f32]) {
        values.par_chunks_mut(16 * 1024).for_each(|chunk| activate(self, chunk));
    }

    /// The activation of every element: in parallel on the CPU, candle's kernels elsewhere.
    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        if on_cpu_f32(x) {
            x.contiguous()?.apply_op1_no_bwd(&self)
        } else {
            self.apply_by_tensors(x)
        }
    }

    fn apply_by_tensors(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => x.gelu_erf(),
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        }
    }
}

/// `e^x` from plain arithmetic, so that loops over it vectorise (libm's `expf` is
/// a call per element): `2^n e^r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`, and
/// Cephes' degree-6 polynomial for `e^r` (relative error about 2e-7). Inputs below
/// -87.3 give about 1e-38 instead of 0, which no caller can tell apart.
#[inline(always)]
fn exp<const FUSED: bool>(x: f32) -> f32 {
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let fma = mul_add::<FUSED>;
    let n = fma(x, std::f32::consts::LOG2_E, ROUND) - ROUND;
    let r = fma(-n, LN2_LO, fma(-n, LN2_HI, x));
    let p = 1.987_569_1e-4;
    let p = fma(p, r, 1.398_199_9e-3);
    let p = fma(p, r, 8.333_452e-3);
    let p = fma(p, r, 4.166_579_6e-2);
    let p = fma(p, r, 1.666_666_5e-1);
    let p = fma(p, r, 5.000_000_1e-1);
    let e_r = fma(p * r, r, r + 1.0);
    // 2^n built from bits without a float-to-int conversion (Rust's saturating `as`
    // keeps that scalar): n + 127 (1..=254 after the clamp) + 1.5 * 2^23 holds n + 127
    // in its low mantissa bits, which the shift moves into the exponent field.
    e_r * f32::from_bits((n + (127.0 + ROUND)).to_bits() << 23)
}

/// Abramowitz & Stegun 7.1.26.
#[inline(always)]
fn erf<const FUSED: bool>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let sign = x.signum();
    // erf(4) is 1 in f32; beyond it exp(-x^2) would turn subnormal (from |x| = 9.3),
    // which Intel CPUs compute many times slower, and outlier activations are common.
    let x = x.abs().min(4.0);
    let fma = mul_add::<FUSED>;
    let t = reciprocal::<FUSED>(fma(P, x, 1.0));
    let poly = t * fma(t, fma(t, fma(t, fma(t, A[4], A[3]), A[2]), A[1]), A[0]);
    sign * fma(-poly, exp::<FUSED>(-x * x), 1.0)
}

/// `1 / d` for `d` in [1, 2.4] (`erf`'s `1 + p x`) without a division, which vector
/// units run several times slower than multiply-adds (it was most of GELU's cost): the
/// reciprocal read off `d`'s bits (within 5.1%), then three Newton steps, each
/// squaring the error (to 9e-8 of the result, about one f32 ulp).
#[inline(always)]
fn reciprocal<const FUSED: bool>(d: f32) -> f32 {
    let fma = mul_add::<FUSED>;
    let mut y = f32::from_bits(0x7EF3_11C3 - d.to_bits());
    for _ in 0..3 {
        y = fma(y, fma(-d, y, 1.0), y);
    }
    y
}

widest_vectors!(activate => activate_portable(activation: Activation, values: &mut [f32]));

#[inline(always)]
fn activate_portable<const FUSED: bool>(activation: Activation, values: &mut [f32]) {
    match activation {
        Activation::Gelu => values.iter_mut().for_each(|v| *v = Activation::Gelu.apply::<FUSED>(*v)),
        Activation::QuickGelu => values.iter_mut().for_each(|v| *v = Activation::QuickGelu.apply::<FUSED>(*v)),
    }
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        match self {
            Self::Gelu => "alfa-gelu-erf",
            Self::QuickGelu => "alfa-quick-gelu",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut out = contiguous_f32(self.name(), storage, layout)?.to_vec();
        self.apply_in_place(&mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Which keys a query attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every token of the sequence.
    Full,
    /// Token i attends to tokens 0..=i (the text tower).
    Causal,
}

/// Multi-head scaled dot-product attention over a fused `qkv` [B, L, 3D] (queries,
/// keys and values side by side, each D wide and split into `heads` heads, as
/// `nn.MultiheadAttention`'s `in_proj` produces them), for the first `queries` tokens
/// of each sequence as queries: [B, queries, D], heads concatenated. Fewer queries
/// than tokens serve the class token alone.
pub fn attention(qkv: &Tensor, heads: usize, queries: usize, mask: Mask, kernels: Kernels) -> candle_core::Result<Tensor> {
    let (_, l, three_d) = qkv.dims3()?;
    if three_d % (3 * heads) != 0 || queries > l {
        candle_core::bail!("attention: {queries} queries over qkv {:?} with {heads} heads", qkv.dims());
    }
    if kernels == Kernels::Native && on_cpu_f32(qkv) {
        return qkv.contiguous()?.apply_op1_no_bwd(&Attend { heads, queries, mask });
    }
    attention_by_matmul(qkv, heads, queries, mask)
}

/// `attention` from candle's tensor operations (the generic kernels).
fn attention_by_matmul(qkv: &Tensor, heads: usize, queries: usize, mask: Mask) -> candle_core::Result<Tensor> {
    let (b, l, three_d) = qkv.dims3()?;
    let d = three_d / 3;
    let head_dim = d / heads;
    let split = |i: usize, rows: usize| -> candle_core::Result<Tensor> {
        qkv.narrow(1, 0, rows)?
            .narrow(2, i * d, d)?
            .reshape((b, rows, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = (split(0, queries)? * (1.0 / (head_dim as f64).sqrt()))?;
    let (k, v) = (split(1, l)?, split(2, l)?);
    let mut logits = q.matmul(&k.t()?)?; // [B, H, queries, L]
    if mask == Mask::Causal {
        let causal: Vec<f32> = (0..queries)
            .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        logits = logits.broadcast_add(&Tensor::from_vec(causal, (queries, l), qkv.device())?.to_dtype(logits.dtype())?)?;
    }
    softmax_last_dim(&logits)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, queries, d))
}

/// Softmax over the last dimension, computed in f32 for bf16 and f16 inputs and
/// returned in their type. candle's CPU softmax sums a row in the input's type: in
/// bf16 (8 significant bits) a running sum near 1 no longer grows by weights below
/// 1/256, so a row over hundreds of tokens would not sum to 1. Its CUDA kernel
/// sums in f32; computing in f32 makes every device do what the GPU does.
pub fn softmax_last_dim(logits: &Tensor) -> candle_core::Result<Tensor> {
    match logits.dtype() {
        DType::BF16 | DType::F16 => candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?.to_dtype(logits.dtype()),
        _ => candle_nn::ops::softmax_last_dim(logits),
    }
}

struct Attend {
    heads: usize,
    queries: usize,
    mask: Mask,
}

impl CustomOp1 for Attend {
    fn name(&self) -> &'static str {
        "alfa-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = contiguous_f32(self.name(), storage, layout)?;
        let (b, l, three_d) = layout.shape().dims3()?;
        let (d, heads, queries) = (three_d / 3, self.heads, self.queries);
        let head_dim = d / heads;
        // One task per (sequence, head, block of queries), each writing its rows of
        // the head's columns of `out` [B, queries, D] in place. Blocks of queries keep
        // a task's weights [rows, L] in the core's L2 cache where a long sequence's
        // whole [L, L] (DINOv2's 1370 tokens: 7.5 MB a head) would stream through
        // memory between the two products and the softmax, and give two cores more
        // than one sequence's few heads to share.
        let rows = query_block(l).min(queries.max(1));
        let blocks = queries.div_ceil(rows);
        let mut out = vec![0f32; b * queries * d];
        let shared = SharedOut(out.as_mut_ptr());
        (0..b * heads * blocks).into_par_iter().for_each(|task| {
            let (seq, head, block) = (task / (heads * blocks), task / blocks % heads, task % blocks);
            let first = block * rows;
            let block_rows = rows.min(queries - first);
            let tokens = &data[seq * l * three_d..(seq + 1) * l * three_d];
            let shape = HeadShape { l, d, head_dim, offset: head * head_dim, mask: self.mask };
            ATTENTION_SCRATCH.with_borrow_mut(|(weights, sums)| {
                if weights.len() < block_rows * l {
                    weights.resize(block_rows * l, 0.0);
                }
                if sums.len() < block_rows {
                    sums.resize(block_rows, 0.0);
                }
                // SAFETY: the task's rows first..first + block_rows <= queries of
                // sequence seq < B, at columns head * head_dim.. + head_dim <= D, lie
                // within `out` [B, queries, D], which outlives the tasks; no two tasks
                // share a (sequence, row, head).
                unsafe {
                    let block_out = shared.get().add((seq * queries + first) * d + head * head_dim);
                    attend_head(tokens, shape, first, block_rows, weights, sums, block_out);
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, queries, d))))
    }
}

/// Queries per attention task over `l` keys (see `Attend::cpu_fwd`): their weights
/// [rows, l] within 1 MiB, the L2 cache of current cores (1 to 2 MiB): 191 of
/// DINOv2's 1370 tokens, all of CLIP's 226. More rows pack the keys and values for
/// fewer queries' products (`gemm` packs its right-hand side on every call): here,
/// 256 rows ran 10% faster than 128, 64 rows 15% slower.
fn query_block(l: usize) -> usize {
    ((1 << 20) / (4 * l.max(1))).max(16)
}

thread_local! {
    /// An attention task's weights [rows, L] and row sums, kept by each thread from
    /// call to call: fresh, their megabyte would be mapped in page by page (a page
    /// fault each) for every block of every layer.
    static ATTENTION_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The attention output [B, queries, D], written by the tasks in place.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the tasks write disjoint parts of the buffer (see `Attend::cpu_fwd`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method, not the field: a closure that read `.0` would capture the bare
    /// pointer, which is neither `Send` nor `Sync`.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One head of one sequence (`tokens`: [L, 3D] row-major) for the `rows` queries
/// from query `first` on, into `out` ([rows, head_dim] at row stride D, the head's
/// columns of the output): two single-threaded `gemm` calls, `Q Kᵀ` and `P V`,
/// reading the head in place (row stride 3D), with the softmax between them. From
/// the images' 226 tokens down to the windows' 5, `gemm`'s register-tiled kernel is 2
/// to 4 times faster than a loop over queries (which reloads every key and value per
/// query), packing included. The causal mask zeroes the later keys' weights after the
/// full product: computing half the logits for nothing is cheaper than giving up the
/// tiled kernel.
///
/// # Safety
/// `out` holds `rows` rows of `head_dim` values at row stride D for this call alone.
unsafe fn attend_head(tokens: &[f32], shape: HeadShape, first: usize, rows: usize, weights: &mut [f32], sums: &mut [f32], out: *mut f32) {
    let HeadShape { l, d, head_dim, offset, mask } = shape;
    let three_d = (3 * d) as isize;
    let weights = &mut weights[..rows * l];
    let sums = &mut sums[..rows];
    let scale = 1.0 / (head_dim as f32).sqrt();
    assert!(tokens.len() >= l * 3 * d && first + rows <= l && offset + head_dim <= d);
    // SAFETY: q is read at rows first..first + rows <= L of `tokens` [L, 3D], k and v
    // at rows < L, all at columns offset..offset + head_dim of their third, in
    // bounds (asserted above); `weights` is [rows, L], row-major; `out` is the
    // caller's (this function's contract).
    unsafe {
        let q = tokens.as_ptr().add(first * 3 * d + offset);
        let k = tokens.as_ptr().add(d + offset);
        let v = tokens.as_ptr().add(2 * d + offset);
        // weights[i, j] = scale * sum_c q[i, c] k[j, c]: the rhs is Kᵀ, [head_dim, L].
        gemm::gemm(
            rows, l, head_dim, weights.as_mut_ptr(), 1, l as isize, false,
            q, 1, three_d, k, three_d, 1,
            0.0, scale, false, false, false, gemm::Parallelism::None,
        );
        softmax_rows(weights, l, first, mask, sums);
        gemm::gemm(
            rows, head_dim, l, out, 1, d as isize, false,
            weights.as_ptr(), 1, l as isize, v, 1, three_d,
            0.0, 1.0, false, false, false, gemm::Parallelism::None,
        );
        // The softmax's division, on head_dim outputs a row instead of its L weights.
        for (row, sum) in sums.iter().enumerate() {
            let inverse = 1.0 / sum;
            std::slice::from_raw_parts_mut(out.add(row * d), head_dim).iter_mut().for_each(|o| *o *= inverse);
        }
    }
}

// Each row of `weights` [rows, L] (queries `first`, `first + 1`, ...) to its softmax
// over the keys the mask lets its query see, but for the division by the row's sum,
// which goes to `sums` [rows]; the keys hidden from the query get weight 0.
widest_vectors!(softmax_rows => softmax_rows_portable(weights: &mut [f32], l: usize, first: usize, mask: Mask, sums: &mut [f32]));

/// Accumulators of the reductions (`softmax_rows`' maximum and sum, `lane_sum`):
/// Rust keeps float arithmetic in its written order, so one running sum makes a loop
/// (and the `exp` in it) scalar; 16 independent ones (one AVX-512 vector, two AVX2
/// ones) let it vectorise.
const LANES: usize = 16;

#[inline(always)]
fn softmax_rows_portable<const FUSED: bool>(weights: &mut [f32], l: usize, first: usize, mask: Mask, sums: &mut [f32]) {
    for ((i, row), row_sum) in weights.chunks_exact_mut(l).enumerate().zip(sums.iter_mut()) {
        let keys = match mask {
            Mask::Full => l,
            Mask::Causal => first + i + 1,
        };
        let (seen, hidden) = row.split_at_mut(keys);
        hidden.fill(0.0);
        let mut maxima = [f32::NEG_INFINITY; LANES];
        let mut chunks = seen.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (m, &w) in maxima.iter_mut().zip(chunk) {
                // Not `f32::max`, whose NaN rule costs a compare and a blend per vector.
                *m = if w > *m { w } else { *m };
            }
        }
        let max = chunks.remainder().iter().chain(&maxima).fold(f32::NEG_INFINITY, |m, &w| m.max(w));
        let mut sums = [0f32; LANES];
        let mut chunks = seen.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (s, w) in sums.iter_mut().zip(chunk) {
                *w = softmax_exp::<FUSED>(*w - max);
                *s += *w;
            }
        }
        let mut sum = 0.0;
        for w in chunks.into_remainder() {
            *w = softmax_exp::<FUSED>(*w - max);
            sum += *w;
        }
        *row_sum = sum + sums.iter().sum::<f32>();
    }
}

/// `e^z` for a logit `z` below the row's largest (z <= 0), 0 below e^-80: such weights
/// sum to under 1e-31 of the row's (f32 keeps 1e-7), and kept, they would turn
/// subnormal when the row is normalised (down to 1e-38 / L), which Intel CPUs
/// multiply many times slower in the `P V` product that follows.
#[inline(always)]
fn softmax_exp<const FUSED: bool>(z: f32) -> f32 {
    if z < -80.0 { 0.0 } else { exp::<FUSED>(z) }
}

#[derive(Clone, Copy)]
struct HeadShape {
    l: usize,
    d: usize,
    head_dim: usize,
    /// The head's first column within q, k and v.
    offset: usize,
    mask: Mask,
}

fn on_cpu_f32(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// `nn.LayerNorm` over the last dimension. On the CPU in f32 with the native kernels
/// the rows run in parallel in the widest vectors, the mean and the variance each a
/// pass with [`LANES`] accumulators (candle's CPU kernel sums a row into one scalar,
/// `E[x^2] - mean^2`); elsewhere candle's fused layer norm.
pub struct LayerNorm {
    candle: candle_nn::LayerNorm,
    eps: f32,
    kernels: Kernels,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64, kernels: Kernels) -> Self {
        Self { candle: candle_nn::LayerNorm::new(weight, bias, eps), eps: eps as f32, kernels }
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let bias = self.candle.bias();
        let native = self.kernels == Kernels::Native && on_cpu_f32(x) && on_cpu_f32(self.candle.weight());
        match bias {
            Some(bias) if native && on_cpu_f32(bias) => {
                let op = Normalize { weight: self.candle.weight().contiguous()?, bias: bias.contiguous()?, eps: self.eps };
                x.contiguous()?.apply_op1_no_bwd(&op)
            }
            _ => candle_core::Module::forward(&self.candle, x),
        }
    }
}

struct Normalize {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

/// Rows per task of `Normalize`.
const NORM_ROWS: usize = 16;

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "alfa-layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), storage, layout)?;
        let width = self.weight.dim(0)?;
        if layout.shape().dims().last() != Some(&width) {
            candle_core::bail!("{}: x {:?} with weights of {width}", self.name(), layout.shape());
        }
        let mut out = vec![0f32; x.len()];
        with_cpu_f32(&self.weight, |weight| {
            with_cpu_f32(&self.bias, |bias| {
                out.par_chunks_mut(NORM_ROWS * width).zip(x.par_chunks(NORM_ROWS * width)).for_each(|(out, x)| {
                    normalize_rows(x, out, weight, bias, self.eps);
                });
            })
        })??;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

// Each row of `x` [rows, width] layer-normalised into `out`, scaled by `weight` and
// shifted by `bias` [width].
widest_vectors!(normalize_rows => normalize_rows_portable(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32));

#[inline(always)]
fn normalize_rows_portable<const FUSED: bool>(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = weight.len();
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = lane_sum(row, |v| v) / width as f32;
        let variance = lane_sum(row, |v| (v - mean) * (v - mean)) / width as f32;
        let inverse = 1.0 / (variance + eps).sqrt();
        for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
            *o = mul_add::<FUSED>((v - mean) * inverse, w, b);
        }
    }
}

/// The sum of `f` over `values` in [`LANES`] accumulators (a loop that vectorises).
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &v) in sums.iter_mut().zip(chunk) {
            *s += f(v);
        }
    }
    chunks.remainder().iter().map(|&v| f(v)).sum::<f32>() + sums.iter().sum::<f32>()
}

/// Each row's largest value and its first column, of `x` [rows, cols]: one parallel
/// pass on the CPU where candle's `max` and `argmax` are two single-threaded ones (a
/// few-shot query chunk against a 16-image DINOv2 bank is [1024, 21904]).
pub fn row_max(x: &Tensor) -> candle_core::Result<(Vec<f32>, Vec<u32>)> {
    let (rows, cols) = x.dims2()?;
    if !on_cpu_f32(x) || cols == 0 {
        return Ok((x.max(candle_core::D::Minus1)?.to_vec1()?, x.argmax(candle_core::D::Minus1)?.to_vec1()?));
    }
    with_cpu_f32(&x.contiguous()?, |data| {
        let mut best = vec![(f32::NEG_INFINITY, 0u32); rows];
        best.par_iter_mut().zip(data.par_chunks_exact(cols)).for_each(|(best, row)| {
            for (j, &v) in row.iter().enumerate() {
                if v > best.0 {
                    *best = (v, j as u32);
                }
            }
        });
        best.into_iter().unzip()
    })
}

/// What follows the matmul of `linear`, fused into the same pass over the output.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `x W + b`.
    None,
    /// `act(x W + b)`: the MLP's first layer.
    Activation(Activation),
    /// `residual + x W + b`: a block's output projections.
    Residual(&'a Tensor),
}

/// A linear layer's weight [in, out], in the layout of the kernel that will run it.
pub enum LinearWeight {
    /// For candle's matmul and element-wise ops: the generic kernels, any device.
    Generic(Tensor),
    /// For the fused `gemm` kernel ([`CpuFamily::Portable`]).
    Matrix(Tensor),
    /// Packed once for `PackedWeight::matmul` (AVX-512, or AVX2 and FMA).
    Packed(PackedWeight),
}

impl LinearWeight {
    /// `weight_t` [in, out] (f32), packed when the native CPU kernel can use it. On
    /// the native kernels bf16 exists only packed (`Precision::check` refuses it where
    /// that kernel cannot run, and f16 there); the generic kernels hold the weight
    /// converted to the precision's type, for candle's matmul in it.
    pub fn new(weight_t: Tensor, precision: Precision, kernels: Kernels) -> candle_core::Result<Self> {
        let native = kernels == Kernels::Native && on_cpu_f32(&weight_t);
        if !native {
            return Ok(Self::Generic(weight_t.to_dtype(precision.dtype(Kernels::Generic))?));
        }
        let (inner, cols) = weight_t.dims2()?;
        if let Some(packed) = with_cpu_f32(&weight_t.contiguous()?, |w| PackedWeight::new(w, inner, cols, precision))? {
            return Ok(Self::Packed(packed));
        }
        if precision != Precision::F32 {
            candle_core::bail!("no {} kernel for this weight on this CPU", precision.name());
        }
        Ok(Self::Matrix(weight_t))
    }

    /// The type the layer's input and output have: f32, but for generic weights in
    /// bf16 or f16.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Generic(w) => w.dtype(),
            Self::Matrix(_) | Self::Packed(_) => DType::F32,
        }
    }

    fn cols(&self) -> candle_core::Result<usize> {
        match self {
            Self::Generic(w) | Self::Matrix(w) => w.dim(1),
            Self::Packed(p) => Ok(p.cols()),
        }
    }
}

/// `x W + b` over all leading dimensions of `x` [.., in] with `weight` [in, out],
/// then `epilogue`. On the CPU the output starts as `residual + b` and the matmul
/// accumulates into it, then the activation runs in place: one pass over the output,
/// where candle's matmul (a zeroed output), a bias add, a residual add and an
/// activation would each read and write all of it into a fresh allocation.
pub fn linear(x: &Tensor, weight: &LinearWeight, bias: Option<&Tensor>, epilogue: Epilogue) -> candle_core::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let inner = dims.pop().unwrap_or(1);
    let rows = x.elem_count() / inner.max(1);
    let x2 = x.contiguous()?.reshape((rows, inner))?;
    let out_dim = weight.cols()?;
    dims.push(out_dim);
    let residual = match epilogue {
        Epilogue::Residual(r) => Some(r.contiguous()?.reshape((rows, out_dim))?),
        _ => None,
    };
    let activation = match epilogue {
        Epilogue::Activation(a) => Some(a),
        _ => None,
    };
    let y = match weight {
        LinearWeight::Generic(weight_t) => {
            let mut y = x2.matmul(weight_t)?;
            if let Some(b) = bias {
                y = y.broadcast_add(b)?;
            }
            if let Some(a) = activation {
                y = a.apply_by_tensors(&y)?;
            }
            match residual {
                Some(r) => (y + r)?,
                None => y,
            }
        }
        _ => {
            let op = Linear { weight, bias: bias.map(Tensor::contiguous).transpose()?, residual, activation };
            x2.apply_op1_no_bwd(&op)?
        }
    };
    y.reshape(dims)
}

struct Linear<'a> {
    weight: &'a LinearWeight,
    bias: Option<Tensor>,
    residual: Option<Tensor>,
    activation: Option<Activation>,
}

/// A custom op's input as the f32 slice its layout covers; `op` names the op in the error.
fn contiguous_f32<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op} expects f32");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} expects a contiguous tensor");
    };
    Ok(&data[start..end])
}

/// The f32 data of a contiguous CPU tensor, borrowed for `f`.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("expected a contiguous f32 CPU tensor");
    };
    Ok(f(&data[start..end]))
}

/// A fresh `rows` x `cols` output, each row its `residual` row plus `bias` (zeros
/// without either), written once without zeroing first: the memory comes reused from
/// the heap (`crate::allocator`), where `vec![0.0; n]` would clear it first, or
/// freshly mapped, where reading a page before writing it would map the shared zero
/// page, then fault again at the write and flush the TLB on every core.
fn started_rows(rows: usize, cols: usize, bias: Option<&[f32]>, residual: Option<&[f32]>) -> candle_core::Result<Vec<f32>> {
    let n = rows * cols;
    if bias.is_some_and(|b| b.len() != cols) || residual.is_some_and(|r| r.len() != n) {
        candle_core::bail!("alfa-linear: bias or residual does not fit the [{rows}, {cols}] output");
    }
    if bias.is_none() && residual.is_none() {
        return Ok(vec![0f32; n]);
    }
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n].par_chunks_mut(cols).enumerate().for_each(|(r, row)| match (residual, bias) {
        (Some(residual), Some(bias)) => {
            for ((o, x), b) in row.iter_mut().zip(&residual[r * cols..(r + 1) * cols]).zip(bias) {
                o.write(x + b);
            }
        }
        (Some(residual), None) => {
            for (o, x) in row.iter_mut().zip(&residual[r * cols..(r + 1) * cols]) {
                o.write(*x);
            }
        }
        (None, Some(bias)) => {
            for (o, b) in row.iter_mut().zip(bias) {
                o.write(*b);
            }
        }
        (None, None) => unreachable!("returned above"),
    });
    // SAFETY: each of the n elements was written above: rows of `cols` elements, each
    // zipped with a residual row and the bias of `cols` elements (checked above).
    unsafe { out.set_len(n) };
    Ok(out)
}

impl CustomOp1 for Linear<'_> {
    fn name(&self) -> &'static str {
        "alfa-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), x, x_layout)?;
        let (rows, inner) = x_layout.shape().dims2()?;
        let cols = self.weight.cols()?;
        let starts = self.bias.is_some() || self.residual.is_some();
        let mut out = match (&self.bias, &self.residual) {
            (Some(b), Some(r)) => with_cpu_f32(b, |b| with_cpu_f32(r, |r| started_rows(rows, cols, Some(b), Some(r))))???,
            (Some(b), None) => with_cpu_f32(b, |b| started_rows(rows, cols, Some(b), None))??,
            (None, Some(r)) => with_cpu_f32(r, |r| started_rows(rows, cols, None, Some(r)))??,
            (None, None) => started_rows(rows, cols, None, None)?,
        };
        match self.weight {
            LinearWeight::Packed(packed) => {
                if packed.inner() != inner {
                    candle_core::bail!("{}: x [{rows}, {inner}] times W [{}, {cols}]", self.name(), packed.inner());
                }
                // The activation runs on each tile as it is written, while it is in L1.
                let activate_tile = self.activation.map(|a| move |tile: &mut [f32]| activate(a, tile));
                packed.matmul(x, rows, &mut out, starts, activate_tile.as_ref().map(|f| f as &TileFinish));
            }
            LinearWeight::Generic(_) => candle_core::bail!("{}: a generic weight runs candle's operations", self.name()),
            LinearWeight::Matrix(w) => {
                if w.dims2()? != (inner, cols) {
                    candle_core::bail!("{}: x [{rows}, {inner}] times W {:?}", self.name(), w.dims());
                }
                with_cpu_f32(&w.contiguous()?, |w| gemm_into(x, w, rows, inner, cols, &mut out, starts))?;
                if let Some(activation) = self.activation {
                    activation.apply_in_place(&mut out);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, cols))))
    }
}

/// `out` [rows, cols] (+)= `x` [rows, inner] `w` [inner, cols] by `gemm`, all row-major.
fn gemm_into(x: &[f32], w: &[f32], rows: usize, inner: usize, cols: usize, out: &mut [f32], starts: bool) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `out` is rows x cols, `x` rows x inner and `w` inner x cols, all
    // row-major and alive for the call; the strides below say exactly that.
    unsafe {
        gemm::gemm(
            rows, cols, inner, out.as_mut_ptr(), 1, cols as isize, starts,
            x.as_ptr(), 1, inner as isize, w.as_ptr(), 1, cols as isize,
            1.0, 1.0, false, false, false, parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_kernel_matches_matmul_attention() {
        let (b, heads, head_dim) = (3, 4, 20);
        // 600 tokens: two blocks of queries (`query_block`: 436), the last one partial,
        // each causal block starting at its own query; 37 = 2 * LANES + 5 for the softmax.
        assert!(query_block(600) < 600);
        for (l, mask) in [5, 37, 600].into_iter().flat_map(|l| [(l, Mask::Full), (l, Mask::Causal)]) {
            let qkv = Tensor::randn(0f32, 1.0, (b, l, 3 * heads * head_dim), &Device::Cpu).unwrap();
            for queries in [l, 1, 4, l.min(query_block(l) + 3)] {
                let fast = attention(&qkv, heads, queries, mask, Kernels::Native).unwrap();
                let reference = attention_by_matmul(&qkv, heads, queries, mask).unwrap();
                assert_eq!(fast.dims(), &[b, queries, heads * head_dim]);
                let diff = (fast - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "{l} tokens, {mask:?}, {queries} queries: max |diff| {diff}");
            }
        }
    }

    #[test]
    fn layer_norm_kernel_matches_candle_and_a_two_pass_reference() {
        let device = Device::Cpu;
        for width in [7, 16, 384, 897] {
            // Rows with a large common offset: where E[x^2] - mean^2 (candle's CPU kernel)
            // loses digits (off by more than 0.05 here), two passes do not.
            // Fixed values (a random draw with a narrow row could land beyond f32's own
            // error of about 5e-5 here, and the test would fail once in a while).
            let values = |n: usize, seed: u32| -> Vec<f32> {
                (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2000).map(|v| v as f32 / 1000.0 - 1.0).collect()
            };
            let x = Tensor::from_vec(values(3 * 37 * width, 1), (3, 37, width), &device).unwrap();
            let x = ((x * 1.7).unwrap() + 100.0).unwrap();
            let weight = Tensor::from_vec(values(width, 2), width, &device).unwrap();
            let bias = Tensor::from_vec(values(width, 3), width, &device).unwrap();
            let norm = |kernels| LayerNorm::new(weight.clone(), bias.clone(), 1e-5, kernels).forward(&x).unwrap();
            let ours = norm(Kernels::Native);
            // The reference in f64: in f32 its own mean of values near 100 is off by
            // about 1e-4, as much as the tolerance.
            let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let x64 = f64_of(&x);
            let mean = x64.mean_keepdim(2).unwrap();
            let centred = x64.broadcast_sub(&mean).unwrap();
            let variance = centred.sqr().unwrap().mean_keepdim(2).unwrap();
            let reference = centred.broadcast_div(&(variance + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&f64_of(&weight)).unwrap().broadcast_add(&f64_of(&bias)).unwrap();
            let max_diff = |a: &Tensor, b: &Tensor| (f64_of(a) - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(max_diff(&ours, &reference) < 1e-4, "width {width}: {}", max_diff(&ours, &reference));
            // The generic kernels run candle's, the same function.
            assert_eq!(norm(Kernels::Generic).dims(), ours.dims());
        }
    }

    #[test]
    fn row_max_matches_candle_max_and_argmax() {
        let x = Tensor::randn(0f32, 1.0, (37, 1001), &Device::Cpu).unwrap();
        let (best, at) = row_max(&x).unwrap();
        assert_eq!(best, x.max(candle_core::D::Minus1).unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(at, x.argmax(candle_core::D::Minus1).unwrap().to_vec1::<u32>().unwrap());
        // A strided view goes through the same pass.
        let (best_t, _) = row_max(&x.t().unwrap()).unwrap();
        assert_eq!(best_t, x.max(0).unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn fused_linear_matches_separate_operations() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 7, 24), &device).unwrap();
        let weight_t = Tensor::randn(0f32, 1.0, (24, 40), &device).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 40, &device).unwrap();
        let residual = Tensor::randn(0f32, 1.0, (2, 7, 40), &device).unwrap();
        let plain = x.broadcast_matmul(&weight_t).unwrap();
        let with_bias = plain.broadcast_add(&bias).unwrap();
        let cases = [
            (None, Epilogue::None, plain.clone()),
            (Some(&bias), Epilogue::None, with_bias.clone()),
            (Some(&bias), Epilogue::Activation(Activation::Gelu), with_bias.gelu_erf().unwrap()),
            (None, Epilogue::Residual(&residual), (&plain + &residual).unwrap()),
            (Some(&bias), Epilogue::Residual(&residual), (&with_bias + &residual).unwrap()),
        ];
        // `gemm` on the matrix, and the packed kernel where this CPU has AVX-512 (in
        // bf16 too where it has AVX512-BF16: inputs and weights keep 8 significant
        // bits, so each product x_i w_i is off by at most 2^-8 of its size, and a sum
        // by 2^-8 sum |x_i w_i|; GELU's slope is below 1.2).
        let bf16_bound = x.abs().unwrap().broadcast_matmul(&weight_t.abs().unwrap()).unwrap().flatten_all().unwrap().max(0).unwrap();
        let bf16_bound = 1.2 * bf16_bound.to_scalar::<f32>().unwrap() / 256.0 + 1e-4;
        let mut weights = vec![
            LinearWeight::new(weight_t.clone(), Precision::F32, Kernels::Generic).unwrap(),
            LinearWeight::Matrix(weight_t.clone()),
            LinearWeight::new(weight_t.clone(), Precision::F32, Kernels::Native).unwrap(),
        ];
        assert!(matches!(weights[0], LinearWeight::Generic(_)));
        // The generic kernels hold half-precision weights in candle's types.
        for (precision, dtype) in [(Precision::Bf16, DType::BF16), (Precision::F16, DType::F16)] {
            assert_eq!(LinearWeight::new(weight_t.clone(), precision, Kernels::Generic).unwrap().dtype(), dtype);
        }
        assert!(LinearWeight::new(weight_t.clone(), Precision::F16, Kernels::Native).is_err());
        if Precision::Bf16.check(&device, Kernels::Native).is_ok() {
            weights.push(LinearWeight::new(weight_t.clone(), Precision::Bf16, Kernels::Native).unwrap());
        }
        // The AVX2 kernel by name, whichever family this process runs.
        let avx2 = with_cpu_f32(&weight_t, |w| PackedWeight::for_family(w, 24, 40, Precision::F32, CpuFamily::Avx2)).unwrap();
        assert_eq!(avx2.is_some(), CpuFamily::Avx2.is_available());
        weights.extend(avx2.map(LinearWeight::Packed));
        for weight in &weights {
            for (i, (bias, epilogue, expected)) in cases.iter().enumerate() {
                let got = linear(&x, weight, *bias, *epilogue).unwrap();
                assert_eq!(got.dims(), &[2, 7, 40]);
                let diff = (got - expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                let (kind, tolerance) = match weight {
                    LinearWeight::Generic(_) => ("candle", 1e-4),
                    LinearWeight::Matrix(_) => ("gemm", 1e-4),
                    LinearWeight::Packed(p) if p.precision() == Precision::F32 => ("packed f32", 1e-4),
                    LinearWeight::Packed(_) => ("packed bf16", bf16_bound),
                };
                assert!(diff < tolerance, "{kind}, case {i}: max |diff| {diff}");
            }
        }
    }

    #[test]
    fn linear_outputs_start_from_residual_and_bias_of_their_shape() {
        let (bias, residual) = ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        assert_eq!(started_rows(2, 3, Some(&bias), Some(&residual)).unwrap(), [11.0, 22.0, 33.0, 41.0, 52.0, 63.0]);
        assert_eq!(started_rows(2, 3, None, Some(&residual)).unwrap(), residual);
        assert_eq!(started_rows(2, 3, Some(&bias), None).unwrap(), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        assert_eq!(started_rows(2, 3, None, None).unwrap(), [0.0; 6]);
        // A bias or residual that would leave part of the output unwritten is refused.
        assert!(started_rows(2, 4, Some(&bias), None).is_err());
        assert!(started_rows(3, 3, None, Some(&residual)).is_err());
    }

    #[test]
    fn causal_attention_ignores_later_tokens() {
        let width = 8;
        for (l, kernels) in [6, 40].into_iter().flat_map(|l| Kernels::ALL.map(|k| (l, k))) {
            let qkv = Tensor::randn(0f32, 1.0, (1, l, 3 * width), &Device::Cpu).unwrap();
            let changed_last = Tensor::cat(&[qkv.narrow(1, 0, l - 1).unwrap(), (qkv.narrow(1, l - 1, 1).unwrap() * 3.0).unwrap()], 1).unwrap();
            let first = |x: &Tensor| attention(x, 2, l, Mask::Causal, kernels).unwrap().narrow(1, 0, l - 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(first(&qkv), first(&changed_last), "{l} tokens, {kernels:?}");
            let full = |x: &Tensor| attention(x, 2, l, Mask::Full, kernels).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_ne!(full(&qkv)[..width], full(&changed_last)[..width], "{l} tokens, {kernels:?}: without the mask the first token sees the last");
        }
    }

    #[test]
    fn kernel_choice_parses_and_is_generic_off_the_cpu() {
        for k in Kernels::ALL {
            assert_eq!(Kernels::parse(k.name()).unwrap(), k);
            assert_eq!(k.on(&Device::Cpu), k);
        }
        let err = Kernels::parse("cuda").unwrap_err().to_string();
        assert!(err.contains("ALFA_KERNELS") && err.contains("`cuda`") && err.contains("native") && err.contains("generic"), "{err}");
    }

    #[test]
    fn vectorisable_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0;
            let want = f64::from(x.exp());
            for got in [exp::<true>(x), exp::<false>(x)] {
                worst = worst.max((f64::from(got) - want).abs() / want);
            }
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(exp::<true>(-1e4) < 1e-37 && exp::<false>(-1e4) >= 0.0);
    }

    #[test]
    fn division_free_reciprocal_is_within_an_ulp_or_two_on_erfs_range() {
        let mut worst = 0f64;
        for i in 0..=140_000 {
            let d = 1.0 + i as f32 / 100_000.0;
            for got in [reciprocal::<true>(d), reciprocal::<false>(d)] {
                worst = worst.max((f64::from(got) * f64::from(d) - 1.0).abs());
            }
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
    }

    #[test]
    fn activations_match_candle_reference() {
        let x = Tensor::arange(-800i64, 800, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let x = (x / 100.0).unwrap();
        let diff = |a: Tensor, b: Tensor| {
            (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        for activation in [Activation::Gelu, Activation::QuickGelu] {
            let reference = activation.apply_by_tensors(&x).unwrap();
            assert!(diff(activation.forward(&x).unwrap(), reference) < 1e-6, "{activation:?}");
        }
    }
}
