//! The linear layers' matmul on AVX-512 and AVX2 CPUs, with each weight packed once,
//! at load.
//!
//! `gemm` copies both operands into its own blocked layout on every call and keeps
//! partial sums in memory between blocks of the inner dimension. A model's weights
//! never change, so here they are laid out once, in panels of output columns (each
//! panel [in, width], contiguous, zero-padded past the last column), and a tile of 6
//! output rows by one panel stays in vector registers for the whole inner dimension:
//! per input column, one load per vector of the panel and 6 broadcasts of the input
//! feed the tile's fused multiply-adds, and the tile is written once. Two kernels:
//!
//! - AVX-512 ([`CpuFamily::Avx512`]): panels of 64 columns, a 6 x 64 tile in 24 of the
//!   32 zmm registers. On the 2-core Zen 4 this project is measured on, it runs at
//!   205-215 GFLOP/s, the FMA units' peak, where `gemm` reaches 165-200 on the same shapes.
//! - AVX2 + FMA ([`CpuFamily::Avx2`], f32 only): panels of 16 columns, a 6 x 16 tile in
//!   12 of the 16 ymm registers, plus the 2 weight vectors and the broadcast input.
//!   Measured against 4 x 24 (12 accumulators, 3 weight vectors), 8 x 8 and 12 x 8 on
//!   one core: 6 x 16 was the fastest, 4 x 24 the slowest (its 16 live registers leave
//!   the compiler none to spare).
//!
//! Two precisions:
//! - `F32`: the same products as any f32 matmul, summed in order of the inner dimension.
//! - `Bf16` (CPUs with AVX512-BF16, opt-in; AVX2 has no bf16 multiply-add): weight and
//!   input rounded to bfloat16 (8 significant bits), products summed in f32 two inner
//!   columns per instruction (`vdpbf16ps`), about twice the f32 rate. This is what
//!   PyTorch's bf16 autocast does to a linear layer on the CPU. The panel then holds
//!   [in / 2, 64] pairs: the u32 at (q, j) is column j's weights of inner rows 2q (low
//!   half) and 2q + 1.

use half::bf16;
use rayon::prelude::*;

use super::Precision;
use super::cpu::CpuFamily;

/// Output rows per register tile, in every kernel.
const TILE_ROWS: usize = 6;
/// One parallel task: this many rows times `TASK_COLS` columns (whole panels). The
/// task's rows of the input (96 x 896 floats: 344 KB) and one panel (at most 896 x 64:
/// 229 KB) stay in the core's L2 while its tiles run.
const TASK_ROWS: usize = 96;
const TASK_COLS: usize = 256;

/// What runs on each row of a tile once it is written (an activation).
pub type TileFinish = dyn Fn(&mut [f32]) + Sync;

/// A weight [inner, cols] in panels of its kernel's width.
pub struct PackedWeight {
    inner: usize,
    cols: usize,
    panels: Panels,
}

/// Panel p is `[p * depth * K::PANEL..][..depth * K::PANEL]`, row-major
/// [depth, K::PANEL], for the kernel K the variant names: depth is `inner` for f32 and
/// `inner.div_ceil(2)` for bf16 pairs.
enum Panels {
    Avx512F32(LineAligned<f32>),
    Avx512Bf16(LineAligned<u32>),
    Avx2F32(LineAligned<f32>),
}

/// Cache lines, in bytes.
const LINE: usize = 64;

/// A zeroed buffer whose first element sits on a cache-line boundary. Panel rows (64 or
/// 256 bytes) then each start on one, and no vector load of the weights straddles two
/// lines; `Vec`'s large allocations start 16 bytes past a page. Measured here, one core,
/// the same tile loop on aligned against such panels: 6 x 64 tiles 10-20% faster, 6 x 16
/// tiles 3-5%.
struct LineAligned<E> {
    /// `len` elements from `start`, and the slack to align them.
    buffer: Vec<E>,
    start: usize,
    len: usize,
}

impl<E: Copy + Default> LineAligned<E> {
    fn zeroed(len: usize) -> Self {
        let slack = LINE / size_of::<E>();
        let buffer = vec![E::default(); len + slack];
        // `align_offset` may decline (usize::MAX); unaligned panels are only slower.
        let start = Some(buffer.as_ptr().align_offset(LINE)).filter(|&o| o < slack).unwrap_or(0);
        Self { buffer, start, len }
    }

    fn as_slice(&self) -> &[E] {
        &self.buffer[self.start..][..self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [E] {
        &mut self.buffer[self.start..][..self.len]
    }
}

/// Whether `family`, on this CPU, has a packed kernel in `precision`.
fn runs(family: CpuFamily, precision: Precision) -> bool {
    if !family.is_available() {
        return false;
    }
    match (family, precision) {
        (CpuFamily::Avx512 | CpuFamily::Avx2, Precision::F32) => true,
        // bw and vl for the masked 16-bit stores that write rounded inputs.
        #[cfg(target_arch = "x86_64")]
        (CpuFamily::Avx512, Precision::Bf16) => {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512bf16") && has!("avx512bw") && has!("avx512vl")
        }
        _ => false,
    }
}

/// Whether the kernel family this process runs ([`CpuFamily::active`]) has a packed
/// kernel in `precision`.
pub fn supports(precision: Precision) -> bool {
    runs(CpuFamily::active(), precision)
}

impl PackedWeight {
    /// `weight` [inner, cols] row-major, packed in `precision` for the kernel family
    /// this process runs; `None` where it has no such kernel (callers keep the matrix
    /// for `gemm`).
    pub fn new(weight: &[f32], inner: usize, cols: usize, precision: Precision) -> Option<Self> {
        Self::for_family(weight, inner, cols, precision, CpuFamily::active())
    }

    /// `new` for `family`'s kernel; `None` where this CPU cannot run it.
    pub(crate) fn for_family(weight: &[f32], inner: usize, cols: usize, precision: Precision, family: CpuFamily) -> Option<Self> {
        if !runs(family, precision) || weight.len() != inner * cols {
            return None;
        }
        let f32_at = |row: usize, col: usize| weight[row * cols + col];
        let panels = match (family, precision) {
            (CpuFamily::Avx512, Precision::F32) => Panels::Avx512F32(pack::<Avx512F32>(inner, cols, f32_at)),
            (CpuFamily::Avx2, Precision::F32) => Panels::Avx2F32(pack::<Avx2F32>(inner, cols, f32_at)),
            (CpuFamily::Avx512, Precision::Bf16) => {
                let rounded = |row: usize, col: usize| {
                    if row < inner { u32::from(bf16::from_f32(weight[row * cols + col]).to_bits()) } else { 0 }
                };
                Panels::Avx512Bf16(pack::<Avx512Bf16>(inner.div_ceil(2), cols, |q, col| {
                    rounded(2 * q, col) | rounded(2 * q + 1, col) << 16
                }))
            }
            // `runs` is false for every other pair.
            (CpuFamily::Avx2, Precision::Bf16) | (_, Precision::F16) | (CpuFamily::Portable, _) => return None,
        };
        Some(Self { inner, cols, panels })
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn precision(&self) -> Precision {
        match self.panels {
            Panels::Avx512F32(_) | Panels::Avx2F32(_) => Precision::F32,
            Panels::Avx512Bf16(_) => Precision::Bf16,
        }
    }

    /// `out` [rows, cols] = `x` [rows, inner] W, plus what `out` already holds when
    /// `accumulate` (the residual and bias `linear` starts it with), then `finish` on
    /// each row of each tile just written (an activation, while the tile is in L1).
    /// In bf16, `x` is rounded first, once.
    pub fn matmul(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        accumulate: bool,
        finish: Option<&TileFinish>,
    ) {
        let (inner, cols) = (self.inner, self.cols);
        assert!(x.len() == rows * inner && out.len() == rows * cols, "packed matmul: x or out has the wrong size");
        let target = Target { rows, cols, out, accumulate, finish };
        match &self.panels {
            Panels::Avx512F32(panels) => run::<Avx512F32>(x, inner, panels.as_slice(), target),
            Panels::Avx2F32(panels) => run::<Avx2F32>(x, inner, panels.as_slice(), target),
            Panels::Avx512Bf16(panels) => {
                let depth = inner.div_ceil(2);
                run::<Avx512Bf16>(&bf16_pairs(x, rows, inner), depth, panels.as_slice(), target)
            }
        }
    }
}

/// The tasks of `matmul` over `x` [rows, depth] and `panels` of `depth` rows, for
/// kernel K.
fn run<K: Kernel>(x: &[K::Element], depth: usize, panels: &[K::Element], target: Target) {
    let Target { rows, cols, out, accumulate, finish } = target;
    let panel_count = cols.div_ceil(K::PANEL);
    let task_panels = TASK_COLS / K::PANEL;
    let panel_groups = panel_count.div_ceil(task_panels);
    let tasks = rows.div_ceil(TASK_ROWS) * panel_groups;
    let out = SharedOut(out.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|task| {
        let first_row = (task / panel_groups) * TASK_ROWS;
        let end_row = (first_row + TASK_ROWS).min(rows);
        let first_panel = (task % panel_groups) * task_panels;
        for p in first_panel..(first_panel + task_panels).min(panel_count) {
            let panel = &panels[p * depth * K::PANEL..][..depth * K::PANEL];
            let width = K::PANEL.min(cols - p * K::PANEL);
            for row in (first_row..end_row).step_by(TILE_ROWS) {
                let tile_rows = TILE_ROWS.min(end_row - row);
                // SAFETY: the tile reads rows row..row + tile_rows of `x` (each
                // `depth` long) and the panel's `depth` rows of K::PANEL, and writes
                // those rows of `out` at columns p * K::PANEL..+width, all in bounds
                // (asserted in `matmul`). Tasks own disjoint (rows, panels) blocks,
                // so no two threads write the same element. Panels for K exist only
                // where `runs` was true for its family and precision on this CPU.
                unsafe {
                    tile::<K>(
                        tile_rows,
                        Tile {
                            x: x.as_ptr().add(row * depth),
                            depth,
                            panel: panel.as_ptr(),
                            out: out.at(row * cols + p * K::PANEL),
                            out_stride: cols,
                            width,
                            accumulate,
                        },
                    );
                }
                if let Some(finish) = finish {
                    for r in row..row + tile_rows {
                        // SAFETY: this task's tile, just written (bounds as above);
                        // no other task touches it.
                        finish(unsafe { std::slice::from_raw_parts_mut(out.at(r * cols + p * K::PANEL), width) });
                    }
                }
            }
        }
    });
}

/// Where `matmul` writes, and how.
struct Target<'a, 'f> {
    rows: usize,
    cols: usize,
    out: &'a mut [f32],
    accumulate: bool,
    finish: Option<&'f TileFinish>,
}

/// Panels of `depth` rows of K::PANEL columns; element (row, col) is `at(row, col)`
/// for the weight's `cols` columns and zero past them.
fn pack<K: Kernel>(depth: usize, cols: usize, at: impl Fn(usize, usize) -> K::Element + Sync) -> LineAligned<K::Element> {
    let mut panels = LineAligned::zeroed(cols.div_ceil(K::PANEL) * depth * K::PANEL);
    panels.as_mut_slice().par_chunks_mut(depth * K::PANEL).enumerate().for_each(|(p, panel)| {
        let first = p * K::PANEL;
        let width = K::PANEL.min(cols - first);
        for (row, packed) in panel.chunks_exact_mut(K::PANEL).enumerate() {
            for (j, value) in packed[..width].iter_mut().enumerate() {
                *value = at(row, first + j);
            }
        }
    });
    panels
}

/// `x` [rows, inner] rounded to bfloat16 (nearest, ties to even), each row as
/// `inner.div_ceil(2)` pairs, the last one zero-padded when `inner` is odd.
fn bf16_pairs(x: &[f32], rows: usize, inner: usize) -> Vec<u32> {
    let depth = inner.div_ceil(2);
    let mut pairs = vec![0u32; rows * depth];
    pairs.par_chunks_mut(depth).zip(x.par_chunks(inner)).for_each(|(pairs, row)| {
        // SAFETY: bf16 panels exist only where `runs(Avx512, Bf16)` was true, and
        // `pairs` holds 2 * depth >= row.len() halves.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            round_row_to_bf16(row, pairs)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (row, pairs);
            unreachable!("no bf16 panels without AVX512-BF16");
        }
    });
    pairs
}

/// Writes `row` as bfloat16 halves into `pairs` (little-endian: element 2q is the
/// low half of pair q). `vcvtneps2bf16` rounds to nearest even and flushes
/// subnormal inputs to zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn round_row_to_bf16(row: &[f32], pairs: &mut [u32]) {
    use std::arch::x86_64::*;
    let halves = pairs.as_mut_ptr().cast::<u16>();
    for (i, chunk) in row.chunks(16).enumerate() {
        let mask = ((1u32 << chunk.len()) - 1) as __mmask16;
        // SAFETY: the masked load reads `chunk` only; the store writes halves
        // 16 i..16 i + chunk.len(), within `pairs` (the caller's guarantee).
        unsafe {
            let rounded = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, chunk.as_ptr()));
            _mm256_mask_storeu_epi16(halves.add(16 * i).cast(), mask, std::mem::transmute::<__m256bh, __m256i>(rounded));
        }
    }
}

/// The output pointer, shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: see `run`: every task writes its own rows x panels block.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` places in. A method, so closures capture the `Sync`
    /// wrapper rather than its raw pointer field.
    ///
    /// # Safety
    /// `offset` is within the output.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: forwarded to the caller.
        unsafe { self.0.add(offset) }
    }
}

/// Where one tile reads and writes: `depth`-long rows of `x`, the panel
/// [depth, K::PANEL], rows of `out` `out_stride` apart, of which the first `width`
/// columns are the tile's.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile<E> {
    x: *const E,
    depth: usize,
    panel: *const E,
    out: *mut f32,
    out_stride: usize,
    width: usize,
    /// Add to what `out` holds instead of overwriting it.
    accumulate: bool,
}

/// A packed kernel: what its panels and input rows hold, its panel width, its tile.
trait Kernel {
    /// f32, or a u32 pair of bfloat16.
    type Element: Copy + Default + Send + Sync;
    /// Output columns per panel; divides `TASK_COLS`.
    const PANEL: usize;

    /// One tile of R (1..=TILE_ROWS) output rows.
    ///
    /// # Safety
    /// R rows of `x` (`depth` long) and of `out` (`out_stride` apart, `width` <=
    /// PANEL columns each), a panel of `depth` rows, and a CPU with the kernel's
    /// instructions.
    unsafe fn tile<const R: usize>(at: Tile<Self::Element>);
}

/// [`CpuFamily::Avx512`] in f32: four 16-lane vectors per panel row.
struct Avx512F32;
/// [`CpuFamily::Avx512`] in bf16 (with AVX512-BF16): four vectors of 16 pairs.
struct Avx512Bf16;
/// [`CpuFamily::Avx2`] in f32: two 8-lane vectors per panel row.
struct Avx2F32;

impl Kernel for Avx512F32 {
    type Element = f32;
    const PANEL: usize = 64;

    unsafe fn tile<const R: usize>(at: Tile<f32>) {
        // SAFETY: forwarded from the caller.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::tile_f32::<R>(at)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = at;
            unreachable!("no packed weights without x86-64")
        }
    }
}

impl Kernel for Avx512Bf16 {
    type Element = u32;
    const PANEL: usize = 64;

    unsafe fn tile<const R: usize>(at: Tile<u32>) {
        // SAFETY: forwarded from the caller.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::tile_bf16::<R>(at)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = at;
            unreachable!("no packed weights without x86-64")
        }
    }
}

impl Kernel for Avx2F32 {
    type Element = f32;
    const PANEL: usize = 16;

    unsafe fn tile<const R: usize>(at: Tile<f32>) {
        // SAFETY: forwarded from the caller.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx2::tile_f32::<R>(at)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = at;
            unreachable!("no packed weights without x86-64")
        }
    }
}

/// One tile of `rows` (1..=6) output rows: the register count is fixed at compile
/// time, so each height is its own function.
///
/// # Safety
/// As `Kernel::tile`.
unsafe fn tile<K: Kernel>(rows: usize, at: Tile<K::Element>) {
    const { assert!(TILE_ROWS == 6 && TASK_COLS % K::PANEL == 0) };
    // SAFETY: forwarded from the caller.
    unsafe {
        match rows {
            6 => K::tile::<6>(at),
            5 => K::tile::<5>(at),
            4 => K::tile::<4>(at),
            3 => K::tile::<3>(at),
            2 => K::tile::<2>(at),
            _ => K::tile::<1>(at),
        }
    }
}

/// The 6 x 64 tiles: 24 zmm accumulators.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Avx512F32, Kernel, Tile};
    use std::arch::x86_64::*;

    const PANEL: usize = Avx512F32::PANEL;

    /// Masks of the tile's four 16-column vectors: columns past `width` are neither
    /// read nor written.
    fn column_masks(width: usize) -> [__mmask16; 4] {
        std::array::from_fn(|j| {
            let lanes = width.saturating_sub(16 * j).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        })
    }

    /// The R x 64 sums a tile starts from: zero, or what `out` holds when accumulating.
    ///
    /// # Safety
    /// R rows of `out`, `out_stride` apart, each with `width` columns.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_start<E, const R: usize>(at: &Tile<E>, masks: &[__mmask16; 4]) -> [[__m512; 4]; R] {
        let mut sums = [[_mm512_setzero_ps(); 4]; R];
        if at.accumulate {
            for (r, row) in sums.iter_mut().enumerate() {
                for (j, sum) in row.iter_mut().enumerate() {
                    // SAFETY: the caller's guarantee; the mask leaves out columns past `width`.
                    *sum = unsafe { _mm512_maskz_loadu_ps(masks[j], at.out.add(r * at.out_stride + 16 * j)) };
                }
            }
        }
        sums
    }

    /// Writes a tile's sums to `out`.
    ///
    /// # Safety
    /// As `tile_start`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_store<E, const R: usize>(at: &Tile<E>, masks: &[__mmask16; 4], sums: &[[__m512; 4]; R]) {
        for (r, row) in sums.iter().enumerate() {
            for (j, sum) in row.iter().enumerate() {
                // SAFETY: the caller's guarantee; the mask leaves out columns past `width`.
                unsafe { _mm512_mask_storeu_ps(at.out.add(r * at.out_stride + 16 * j), masks[j], *sum) };
            }
        }
    }

    /// `out[r, ..width] (+)= sum_i x[r, i] panel[i, ..width]` for R rows: the R x 64
    /// sums stay in registers for the whole inner dimension.
    ///
    /// # Safety
    /// As `Kernel::tile`, on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_f32<const R: usize>(at: Tile<f32>) {
        let masks = column_masks(at.width);
        // SAFETY: the caller guarantees R rows of `x` and `out` and `depth` panel rows.
        unsafe {
            let mut sums = tile_start::<_, R>(&at, &masks);
            for i in 0..at.depth {
                let w = at.panel.add(i * PANEL);
                let weights: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(w.add(16 * j)));
                for (r, row) in sums.iter_mut().enumerate() {
                    let input = _mm512_set1_ps(*at.x.add(r * at.depth + i));
                    for (sum, weight) in row.iter_mut().zip(weights) {
                        *sum = _mm512_fmadd_ps(input, weight, *sum);
                    }
                }
            }
            tile_store(&at, &masks, &sums);
        }
    }

    /// `tile_f32` on bfloat16 pairs: each `vdpbf16ps` adds two products per lane, of
    /// inner rows 2q and 2q + 1, in f32.
    ///
    /// # Safety
    /// As `tile_f32`, with `depth` pairs, and a CPU with AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_bf16<const R: usize>(at: Tile<u32>) {
        let masks = column_masks(at.width);
        // SAFETY: as in `tile_f32`; the transmutes reinterpret 512 bits as 32 bf16.
        unsafe {
            let mut sums = tile_start::<_, R>(&at, &masks);
            for q in 0..at.depth {
                let w = at.panel.add(q * PANEL);
                let weights: [__m512bh; 4] =
                    std::array::from_fn(|j| std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(16 * j).cast())));
                for (r, row) in sums.iter_mut().enumerate() {
                    let input = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*at.x.add(r * at.depth + q) as i32));
                    for (sum, weight) in row.iter_mut().zip(weights) {
                        *sum = _mm512_dpbf16_ps(*sum, input, weight);
                    }
                }
            }
            tile_store(&at, &masks, &sums);
        }
    }
}

/// The 6 x 16 tiles: 12 ymm accumulators, 2 weight vectors, 1 broadcast input.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Avx2F32, Kernel, Tile};
    use std::arch::x86_64::*;

    const PANEL: usize = Avx2F32::PANEL;

    /// `out[r, ..width] (+)= sum_i x[r, i] panel[i, ..width]` for R rows, as
    /// `avx512::tile_f32` with 8-lane vectors. AVX2 has no mask registers: lanes past
    /// `width` are left out by `vmaskmovps`, whose masked-off lanes are neither read
    /// nor written (nor fault).
    ///
    /// # Safety
    /// As `Kernel::tile`, on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_f32<const R: usize>(at: Tile<f32>) {
        // SAFETY: the caller guarantees R rows of `x` and `out` (the masks keep
        // columns below `width`) and `depth` panel rows.
        unsafe {
            // Lane l of vector j is column 8 j + l: kept where 8 j + l < width.
            let masks: [__m256i; 2] = std::array::from_fn(|j| {
                let lanes = at.width.saturating_sub(8 * j).min(8) as i32;
                _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
            });
            let mut sums = [[_mm256_setzero_ps(); 2]; R];
            if at.accumulate {
                for (r, row) in sums.iter_mut().enumerate() {
                    for (j, sum) in row.iter_mut().enumerate() {
                        *sum = _mm256_maskload_ps(at.out.add(r * at.out_stride + 8 * j), masks[j]);
                    }
                }
            }
            for i in 0..at.depth {
                let w = at.panel.add(i * PANEL);
                let weights: [__m256; 2] = std::array::from_fn(|j| _mm256_loadu_ps(w.add(8 * j)));
                for (r, row) in sums.iter_mut().enumerate() {
                    let input = _mm256_broadcast_ss(&*at.x.add(r * at.depth + i));
                    for (sum, weight) in row.iter_mut().zip(weights) {
                        *sum = _mm256_fmadd_ps(input, weight, *sum);
                    }
                }
            }
            for (r, row) in sums.iter().enumerate() {
                for (j, sum) in row.iter().enumerate() {
                    _mm256_maskstore_ps(at.out.add(r * at.out_stride + 8 * j), masks[j], *sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kernel this CPU has, called by its family (not only the one this process
    /// runs): every row count 1..=6 in the tail tile, a partial last panel, several
    /// tasks along both axes, an odd inner dimension (a padded bf16 pair), with and
    /// without accumulation (the residual and bias) and a finish (the activation),
    /// against a plain triple loop over the same numbers (rounded to bf16 first for
    /// `Bf16`).
    #[test]
    fn packed_matmul_matches_the_definition() {
        let (rows, inner, cols) = (TASK_ROWS + 17, 37, TASK_COLS + 29);
        let x: Vec<f32> = (0..rows * inner).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let w: Vec<f32> = (0..inner * cols).map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0).collect();
        let start: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32).collect();
        let kernels = [(CpuFamily::Avx512, Precision::F32), (CpuFamily::Avx512, Precision::Bf16), (CpuFamily::Avx2, Precision::F32)];
        for (family, precision) in kernels {
            let Some(packed) = PackedWeight::for_family(&w, inner, cols, precision, family) else {
                assert!(!runs(family, precision));
                eprintln!("this CPU has no {family:?} kernel for {precision:?}: nothing to test");
                continue;
            };
            let (kernel, first) = match &packed.panels {
                Panels::Avx512F32(p) => ((CpuFamily::Avx512, Precision::F32), p.as_slice().as_ptr().addr()),
                Panels::Avx512Bf16(p) => ((CpuFamily::Avx512, Precision::Bf16), p.as_slice().as_ptr().addr()),
                Panels::Avx2F32(p) => ((CpuFamily::Avx2, Precision::F32), p.as_slice().as_ptr().addr()),
            };
            assert_eq!(kernel, (family, precision));
            assert_eq!(first % LINE, 0, "panels start on a cache line");
            assert_eq!(packed.precision(), precision);
            let round = |v: f32| match precision {
                Precision::F32 => v,
                Precision::Bf16 => bf16::from_f32(v).to_f32(),
                Precision::F16 => unreachable!("no family packs f16 (`runs`)"),
            };
            // `finish` must reach every output exactly once: it squares here.
            let square = |tile: &mut [f32]| tile.iter_mut().for_each(|v| *v *= *v);
            for (accumulate, finish) in [false, true].into_iter().flat_map(|a| [(a, None), (a, Some(&square as &TileFinish))]) {
                for take in [rows, 1, 5, 6, 7] {
                    let mut out = start[..take * cols].to_vec();
                    packed.matmul(&x[..take * inner], take, &mut out, accumulate, finish);
                    for r in 0..take {
                        for c in 0..cols {
                            let base = if accumulate { start[r * cols + c] } else { 0.0 };
                            let want = base + (0..inner).map(|i| round(x[r * inner + i]) * round(w[i * cols + c])).sum::<f32>();
                            let want = if finish.is_some() { want * want } else { want };
                            let got = out[r * cols + c];
                            assert!(
                                (got - want).abs() < 1e-3 * want.abs().max(1.0),
                                "{family:?} {precision:?}, {take} rows, accumulate {accumulate}, finish {}: [{r}, {c}] {got} vs {want}",
                                finish.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    /// The families' kernels for the CPU they run on, and none for a family the CPU
    /// lacks or a precision the family has no kernel for.
    #[test]
    fn kernels_exist_where_the_family_does() {
        let w = vec![1.0; 4 * 3];
        for family in CpuFamily::ALL {
            let f32_kernel = PackedWeight::for_family(&w, 4, 3, Precision::F32, family).is_some();
            assert_eq!(f32_kernel, family != CpuFamily::Portable && family.is_available(), "{family:?}");
        }
        assert!(PackedWeight::for_family(&w, 4, 3, Precision::Bf16, CpuFamily::Avx2).is_none());
        assert!(PackedWeight::for_family(&w, 4, 3, Precision::Bf16, CpuFamily::Portable).is_none());
    }

    /// The vectorised rounding of inputs agrees with `half`'s, ties included.
    #[test]
    fn inputs_round_to_bf16_like_half() {
        if !supports(Precision::Bf16) {
            eprintln!("no AVX512-BF16 here: inputs are never rounded");
            return;
        }
        // 1 + 2^-8 is a tie between two bf16 values (rounds to even: 1.0); 1 + 3 * 2^-8
        // rounds up; odd length for the padded pair.
        let row: Vec<f32> = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5e-3, 3.0e4, 0.1]
            .into_iter()
            .cycle()
            .take(37)
            .enumerate()
            .map(|(i, v)| v * (1.0 + i as f32 / 64.0))
            .collect();
        let pairs = bf16_pairs(&row, 1, row.len());
        assert_eq!(pairs.len(), row.len().div_ceil(2));
        for (i, v) in row.iter().enumerate() {
            let half = (pairs[i / 2] >> (16 * (i % 2))) as u16;
            assert_eq!(half, bf16::from_f32(*v).to_bits(), "element {i}: {v}");
        }
        assert_eq!(pairs[row.len() / 2] >> 16, 0, "the padding half is zero");
    }
}
