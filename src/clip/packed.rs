//! The linear layers' matmul on AVX-512 CPUs, with each weight packed once, at load.
//!
//! `gemm` copies both operands into its own blocked layout on every call and keeps
//! partial sums in memory between blocks of the inner dimension. A model's weights
//! never change, so here they are laid out once, in panels of 64 output columns
//! (each panel [in, 64], contiguous, zero-padded past the last column), and a
//! 6 x 64 tile of the output lives in 24 of the 32 vector registers for the whole
//! inner dimension: per input column, 4 vector loads of the panel and 6 broadcasts
//! of the input feed 24 fused multiply-adds, and the tile is written once. On the
//! 2-core Zen 4 this project is measured on, it runs at 205-215 GFLOP/s, the FMA
//! units' peak, where `gemm` reaches 165-200 on the same shapes.
//!
//! Two precisions:
//! - `F32`: the same products as any f32 matmul, summed in order of the inner dimension.
//! - `Bf16` (CPUs with AVX512-BF16, opt-in): weight and input rounded to bfloat16
//!   (8 significant bits), products summed in f32 two inner columns per instruction
//!   (`vdpbf16ps`), about twice the f32 rate. This is what PyTorch's bf16 autocast
//!   does to a linear layer on the CPU. The panel then holds [in / 2, 64] pairs: the
//!   u32 at (q, j) is column j's weights of inner rows 2q (low half) and 2q + 1.

use half::bf16;
use rayon::prelude::*;

use super::Precision;

/// Output columns per panel: four 16-lane vectors.
const PANEL: usize = 64;
/// Output rows per register tile.
const TILE_ROWS: usize = 6;
/// One parallel task: this many rows times `TASK_PANELS` panels. The task's rows of
/// the input (96 x 896 floats: 344 KB) and one panel (896 x 64: 229 KB) stay in the
/// core's L2 while its tiles run.
const TASK_ROWS: usize = 96;
const TASK_PANELS: usize = 4;

/// What runs on each row of a tile once it is written (an activation).
pub type TileFinish = dyn Fn(&mut [f32]) + Sync;

/// A weight [inner, cols] in panels of `PANEL` columns.
pub struct PackedWeight {
    inner: usize,
    cols: usize,
    panels: Panels,
}

/// Panel p is `[p * depth * PANEL..][..depth * PANEL]`, row-major [depth, PANEL]:
/// depth is `inner` for f32 and `inner.div_ceil(2)` for bf16 pairs.
enum Panels {
    F32(Vec<f32>),
    Bf16(Vec<u32>),
}

/// Whether this CPU runs the packed kernel in `precision`.
pub fn supports(precision: Precision) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let f32 = has!("avx512f");
        match precision {
            Precision::F32 => f32,
            // bw and vl for the masked 16-bit stores that write rounded inputs.
            Precision::Bf16 => f32 && has!("avx512bf16") && has!("avx512bw") && has!("avx512vl"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = precision;
        false
    }
}

impl PackedWeight {
    /// `weight` [inner, cols] row-major, packed in `precision`; `None` where the CPU
    /// cannot run that kernel (callers keep the matrix for `gemm`).
    pub fn new(weight: &[f32], inner: usize, cols: usize, precision: Precision) -> Option<Self> {
        if !supports(precision) || weight.len() != inner * cols {
            return None;
        }
        let panels = match precision {
            Precision::F32 => Panels::F32(pack(inner, cols, |row, col| weight[row * cols + col])),
            Precision::Bf16 => {
                let rounded = |row: usize, col: usize| {
                    if row < inner { u32::from(bf16::from_f32(weight[row * cols + col]).to_bits()) } else { 0 }
                };
                Panels::Bf16(pack(inner.div_ceil(2), cols, |q, col| rounded(2 * q, col) | rounded(2 * q + 1, col) << 16))
            }
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
            Panels::F32(_) => Precision::F32,
            Panels::Bf16(_) => Precision::Bf16,
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
        let target = Target { rows, out, accumulate, finish };
        match &self.panels {
            Panels::F32(panels) => self.run(x, inner, panels, target),
            Panels::Bf16(panels) => {
                let depth = inner.div_ceil(2);
                self.run(&bf16_pairs(x, rows, inner), depth, panels, target)
            }
        }
    }

    /// The tasks of `matmul` over `x` [rows, depth] and `panels` of `depth` rows.
    fn run<E: Element>(&self, x: &[E], depth: usize, panels: &[E], target: Target) {
        let Target { rows, out, accumulate, finish } = target;
        let cols = self.cols;
        let panel_count = cols.div_ceil(PANEL);
        let panel_groups = panel_count.div_ceil(TASK_PANELS);
        let tasks = rows.div_ceil(TASK_ROWS) * panel_groups;
        let out = SharedOut(out.as_mut_ptr());
        (0..tasks).into_par_iter().for_each(|task| {
            let first_row = (task / panel_groups) * TASK_ROWS;
            let end_row = (first_row + TASK_ROWS).min(rows);
            let first_panel = (task % panel_groups) * TASK_PANELS;
            for p in first_panel..(first_panel + TASK_PANELS).min(panel_count) {
                let panel = &panels[p * depth * PANEL..][..depth * PANEL];
                let width = PANEL.min(cols - p * PANEL);
                for row in (first_row..end_row).step_by(TILE_ROWS) {
                    let tile_rows = TILE_ROWS.min(end_row - row);
                    // SAFETY: the tile reads rows row..row + tile_rows of `x` (each
                    // `depth` long) and the panel's `depth` rows of PANEL, and writes
                    // those rows of `out` at columns p * PANEL..+width, all in bounds
                    // (asserted in `matmul`). Tasks own disjoint (rows, panels) blocks,
                    // so no two threads write the same element. `supports` was true
                    // for this precision when the weight was packed.
                    unsafe {
                        tile(
                            tile_rows,
                            Tile {
                                x: x.as_ptr().add(row * depth),
                                depth,
                                panel: panel.as_ptr(),
                                out: out.at(row * cols + p * PANEL),
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
                            finish(unsafe { std::slice::from_raw_parts_mut(out.at(r * cols + p * PANEL), width) });
                        }
                    }
                }
            }
        });
    }
}

/// Where `matmul` writes, and how.
struct Target<'a, 'f> {
    rows: usize,
    out: &'a mut [f32],
    accumulate: bool,
    finish: Option<&'f TileFinish>,
}

/// Panels of `depth` rows of `PANEL` columns; element (row, col) is `at(row, col)`
/// for the weight's `cols` columns and zero past them.
fn pack<E: Copy + Default + Send>(depth: usize, cols: usize, at: impl Fn(usize, usize) -> E + Sync) -> Vec<E> {
    let mut panels = vec![E::default(); cols.div_ceil(PANEL) * depth * PANEL];
    panels.par_chunks_mut(depth * PANEL).enumerate().for_each(|(p, panel)| {
        let first = p * PANEL;
        let width = PANEL.min(cols - first);
        for (row, packed) in panel.chunks_exact_mut(PANEL).enumerate() {
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
        // SAFETY: bf16 panels exist only where `supports(Bf16)` was true, and
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

/// Where one tile reads and writes: `depth`-long rows of `x`, the panel [depth, PANEL],
/// rows of `out` `out_stride` apart, of which the first `width` columns are the tile's.
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

/// What panels and input rows hold: f32, or a u32 pair of bfloat16.
trait Element: Copy + Default + Send + Sync {
    /// One tile of R output rows.
    ///
    /// # Safety
    /// As `tile_f32`/`tile_bf16`.
    unsafe fn tile<const R: usize>(at: Tile<Self>);
}

impl Element for f32 {
    unsafe fn tile<const R: usize>(at: Tile<Self>) {
        // SAFETY: forwarded from the caller.
        unsafe { tile_f32::<R>(at) }
    }
}

impl Element for u32 {
    unsafe fn tile<const R: usize>(at: Tile<Self>) {
        // SAFETY: forwarded from the caller.
        unsafe { tile_bf16::<R>(at) }
    }
}

/// Elsewhere `supports` is false, so no panel is ever packed and no tile runs.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_f32<const R: usize>(_: Tile<f32>) {
    unreachable!("PackedWeight::new returns None without AVX-512");
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_bf16<const R: usize>(_: Tile<u32>) {
    unreachable!("PackedWeight::new returns None without AVX512-BF16");
}

/// One tile of `rows` (1..=6) output rows: the register count is fixed at compile
/// time, so each height is its own function.
///
/// # Safety
/// As `tile_f32`.
unsafe fn tile<E: Element>(rows: usize, at: Tile<E>) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match rows {
            6 => E::tile::<6>(at),
            5 => E::tile::<5>(at),
            4 => E::tile::<4>(at),
            3 => E::tile::<3>(at),
            2 => E::tile::<2>(at),
            _ => E::tile::<1>(at),
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m512, __mmask16};

/// Masks of the tile's four 16-column vectors: columns past `width` are neither
/// read nor written.
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_start<E, const R: usize>(at: &Tile<E>, masks: &[__mmask16; 4]) -> [[__m512; 4]; R] {
    use std::arch::x86_64::*;
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
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_store<E, const R: usize>(at: &Tile<E>, masks: &[__mmask16; 4], sums: &[[__m512; 4]; R]) {
    use std::arch::x86_64::*;
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
/// R rows of `x` (`depth` long) and of `out` (as `tile_start`), a panel of `depth`
/// rows, and a CPU with AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_f32<const R: usize>(at: Tile<f32>) {
    use std::arch::x86_64::*;
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_bf16<const R: usize>(at: Tile<u32>) {
    use std::arch::x86_64::*;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row count 1..=6 in the tail tile, a partial last panel, several tasks
    /// along both axes, an odd inner dimension (a padded bf16 pair), with and without
    /// accumulation, in both precisions, against a plain triple loop over the same
    /// numbers (rounded to bf16 first for `Bf16`).
    #[test]
    fn packed_matmul_matches_the_definition() {
        let (rows, inner, cols) = (TASK_ROWS + 17, 37, PANEL * TASK_PANELS + 29);
        let x: Vec<f32> = (0..rows * inner).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let w: Vec<f32> = (0..inner * cols).map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0).collect();
        let start: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32).collect();
        for precision in [Precision::F32, Precision::Bf16] {
            let Some(packed) = PackedWeight::new(&w, inner, cols, precision) else {
                eprintln!("this CPU has no packed kernel for {precision:?}: nothing to test");
                continue;
            };
            assert_eq!(packed.precision(), precision);
            let round = |v: f32| match precision {
                Precision::F32 => v,
                Precision::Bf16 => bf16::from_f32(v).to_f32(),
            };
            for accumulate in [false, true] {
                for take in [rows, 1, 5, 6, 7] {
                    let mut out = start[..take * cols].to_vec();
                    // `finish` must reach every output exactly once: it squares here.
                    let square = |tile: &mut [f32]| tile.iter_mut().for_each(|v| *v *= *v);
                    packed.matmul(&x[..take * inner], take, &mut out, accumulate, Some(&square));
                    for r in 0..take {
                        for c in 0..cols {
                            let base = if accumulate { start[r * cols + c] } else { 0.0 };
                            let want = base + (0..inner).map(|i| round(x[r * inner + i]) * round(w[i * cols + c])).sum::<f32>();
                            let want = want * want;
                            let got = out[r * cols + c];
                            assert!(
                                (got - want).abs() < 1e-3 * want.max(1.0),
                                "{precision:?}, {take} rows, accumulate {accumulate}: [{r}, {c}] {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
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
