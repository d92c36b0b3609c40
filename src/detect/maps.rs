//! Dense maps: window scores to a patch map (harmonic aggregation), scales
//! combined, bilinear upsampling and Gaussian smoothing (METHOD section 4).

use image::DynamicImage;

/// A row-major grid of scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Grid {
    pub fn new(width: usize, height: usize, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), width * height, "grid {width}x{height}");
        Self { width, height, values }
    }

    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.values[y * self.width + x]
    }

    pub fn max(&self) -> f32 {
        self.values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    /// How close `other` (a map of the same size, e.g. from another precision) is.
    pub fn agreement(&self, other: &Grid) -> MapAgreement {
        assert_eq!((self.width, self.height), (other.width, other.height), "maps of different sizes");
        let (a, b) = (&self.values, &other.values);
        let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let (mean_a, mean_b) = (mean(a), mean(b));
        let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x) - mean_a, f64::from(y) - mean_b);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        MapAgreement {
            max_abs_diff: a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max),
            correlation: (ab / (aa * bb).sqrt()) as f32,
        }
    }
}

/// Two maps side by side: the largest difference of a value and Pearson's correlation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MapAgreement {
    pub max_abs_diff: f32,
    pub correlation: f32,
}

/// Row-major patch indices of every stride-1 `scale` x `scale` window on a `grid` x `grid` grid.
/// None when the window does not fit (`DetectSettings::validate` refuses that first).
pub fn window_indices(grid: usize, scale: usize) -> Vec<Vec<u32>> {
    let Some(positions) = (grid + 1).checked_sub(scale) else { return Vec::new() };
    let mut windows = Vec::with_capacity(positions * positions);
    for top in 0..positions {
        for left in 0..positions {
            windows.push(
                (0..scale)
                    .flat_map(|dy| (0..scale).map(move |dx| ((top + dy) * grid + left + dx) as u32))
                    .collect(),
            );
        }
    }
    windows
}

/// Scores are probabilities; this floor keeps `1 / s` finite.
const MIN_SCORE: f32 = 1e-6;

/// Per patch, the sum of `term(score)` over the `scale` x `scale` windows (stride 1,
/// row-major by top-left corner) covering it, and how many there are.
fn accumulate_windows(window_scores: &[f32], grid: usize, scale: usize, term: impl Fn(f32) -> f32) -> (Vec<f32>, Vec<u32>) {
    let positions = grid + 1 - scale;
    assert_eq!(window_scores.len(), positions * positions, "one score per window");
    let mut sum = vec![0f32; grid * grid];
    let mut count = vec![0u32; grid * grid];
    for top in 0..positions {
        for left in 0..positions {
            let t = term(window_scores[top * positions + left]);
            for y in top..top + scale {
                for x in left..left + scale {
                    sum[y * grid + x] += t;
                    count[y * grid + x] += 1;
                }
            }
        }
    }
    (sum, count)
}

/// The patch map of one scale: each patch gets the harmonic mean of the scores of
/// the windows covering it.
pub fn harmonic_patch_map(window_scores: &[f32], grid: usize, scale: usize) -> Grid {
    let (inverse_sum, count) = accumulate_windows(window_scores, grid, scale, |v| 1.0 / v.max(MIN_SCORE));
    let values = inverse_sum.iter().zip(&count).map(|(s, &n)| n as f32 / s).collect();
    Grid::new(grid, grid, values)
}

/// The patch map of one scale: each patch gets the mean of the scores of the
/// windows covering it (few-shot distances, where one near-zero window must not
/// hide the others as it would in a harmonic mean).
pub fn mean_patch_map(window_scores: &[f32], grid: usize, scale: usize) -> Grid {
    let (sum, count) = accumulate_windows(window_scores, grid, scale, |v| v);
    let values = sum.iter().zip(&count).map(|(s, &n)| s / n as f32).collect();
    Grid::new(grid, grid, values)
}

/// Element-wise harmonic mean of maps of one size (combining scales).
pub fn harmonic_mean(maps: &[Grid]) -> Grid {
    let first = &maps[0];
    let values = (0..first.values.len())
        .map(|i| {
            let inv: f32 = maps.iter().map(|m| 1.0 / m.values[i].max(MIN_SCORE)).sum();
            maps.len() as f32 / inv
        })
        .collect();
    Grid::new(first.width, first.height, values)
}

/// Bilinear resize with PyTorch's `align_corners=False` sampling.
pub fn resize_bilinear(map: &Grid, width: usize, height: usize) -> Grid {
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let xs = axis(width, map.width);
    let ys = axis(height, map.height);
    let mut values = Vec::with_capacity(width * height);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = map.at(x0, y0) * (1.0 - fx) + map.at(x1, y0) * fx;
            let bottom = map.at(x0, y1) * (1.0 - fx) + map.at(x1, y1) * fx;
            values.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    Grid::new(width, height, values)
}

/// Gaussian smoothing as `scipy.ndimage.gaussian_filter(sigma, truncate=4)` with its
/// default `reflect` boundary (d c b a | a b c d), which WinCLIP-style code uses.
/// Two separable passes, rows in parallel; the vertical pass adds whole shifted rows
/// so it runs on vectors (a full-size map is ~800k pixels times 33 taps per pass).
pub fn gaussian_blur(map: &Grid, sigma: f32) -> Grid {
    use rayon::prelude::*;
    if sigma <= 0.0 {
        return map.clone();
    }
    let radius = (4.0 * sigma + 0.5) as usize;
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| (-0.5 * ((i as f32 - radius as f32) / sigma).powi(2)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    // Source index of each position of an axis of length n padded by `radius` on
    // both sides: reflect(i) for i in -radius..n + radius.
    let padded_axis = |n: usize| -> Vec<usize> {
        let period = 2 * n as isize;
        (-(radius as isize)..(n + radius) as isize)
            .map(|i| {
                let i = i.rem_euclid(period);
                (if i >= n as isize { period - 1 - i } else { i }) as usize
            })
            .collect()
    };
    let (w, h) = (map.width, map.height);
    let (source_x, source_y) = (padded_axis(w), padded_axis(h));
    let mut horizontal = vec![0f32; w * h];
    horizontal.par_chunks_mut(w).zip(map.values.par_chunks(w)).for_each(|(out, row)| {
        let padded: Vec<f32> = source_x.iter().map(|&x| row[x]).collect();
        for (x, o) in out.iter_mut().enumerate() {
            *o = kernel.iter().zip(&padded[x..]).map(|(k, v)| k * v).sum();
        }
    });
    let mut values = vec![0f32; w * h];
    values.par_chunks_mut(w).enumerate().for_each(|(y, out)| {
        for (k, &weight) in kernel.iter().enumerate() {
            let row = &horizontal[source_y[y + k] * w..][..w];
            out.iter_mut().zip(row).for_each(|(o, v)| *o += weight * v);
        }
    });
    Grid::new(w, h, values)
}

/// A patch map taken to the image's resolution: bilinear upsampling, then the
/// Gaussian smoothing every method shares (ALFA's, `settings.sigma`).
pub fn image_map(patch_map: &Grid, image: &DynamicImage, sigma: f32) -> Grid {
    gaussian_blur(&resize_bilinear(patch_map, image.width() as usize, image.height() as usize), sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_of_maps_by_hand() {
        let a = Grid::new(2, 2, vec![0.0, 1.0, 2.0, 3.0]);
        // A shifted and stretched copy correlates perfectly; the largest gap is 3.5.
        let scaled = Grid::new(2, 2, vec![0.5, 2.5, 4.5, 6.5]);
        let same = a.agreement(&scaled);
        assert!((same.correlation - 1.0).abs() < 1e-6 && (same.max_abs_diff - 3.5).abs() < 1e-6, "{same:?}");
        // Reversed: correlation -1.
        let reversed = a.agreement(&Grid::new(2, 2, vec![3.0, 2.0, 1.0, 0.0]));
        assert!((reversed.correlation + 1.0).abs() < 1e-6 && (reversed.max_abs_diff - 3.0).abs() < 1e-6, "{reversed:?}");
        // [0, 1, 2, 3] against [0, 1, 3, 2]: covariance 4 over variance 5.
        let swapped = a.agreement(&Grid::new(2, 2, vec![0.0, 1.0, 3.0, 2.0]));
        assert!((swapped.correlation - 0.8).abs() < 1e-6, "{swapped:?}");
    }

    #[test]
    fn window_counts_match_winclip() {
        assert_eq!(window_indices(15, 2).len() + window_indices(15, 3).len(), 365);
        assert_eq!(window_indices(4, 2)[0], vec![0, 1, 4, 5]);
        assert_eq!(window_indices(4, 2).last().unwrap(), &vec![10, 11, 14, 15]);
        assert_eq!(window_indices(3, 3), vec![(0..9).collect::<Vec<u32>>()]);
    }

    #[test]
    fn harmonic_aggregation_on_a_known_grid() {
        // 3x3 grid, scale 2: four windows with scores 0.5, 0.25, 0.5, 1.0.
        let map = harmonic_patch_map(&[0.5, 0.25, 0.5, 1.0], 3, 2);
        // Corner (0,0): only window 0 -> 0.5.
        assert!((map.at(0, 0) - 0.5).abs() < 1e-6);
        // (1,0): windows 0 and 1 -> 2 / (2 + 4) = 1/3.
        assert!((map.at(1, 0) - 1.0 / 3.0).abs() < 1e-6);
        // Centre: all four -> 4 / (2 + 4 + 2 + 1) = 4/9.
        assert!((map.at(1, 1) - 4.0 / 9.0).abs() < 1e-6);
        // (2,2): only window 3 -> 1.0.
        assert!((map.at(2, 2) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn mean_aggregation_on_the_same_grid() {
        let map = mean_patch_map(&[0.5, 0.25, 0.5, 1.0], 3, 2);
        assert!((map.at(0, 0) - 0.5).abs() < 1e-6);
        assert!((map.at(1, 0) - 0.375).abs() < 1e-6);
        assert!((map.at(1, 1) - 2.25 / 4.0).abs() < 1e-6);
        assert!((map.at(2, 2) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn scales_combine_by_harmonic_mean() {
        let a = Grid::new(2, 1, vec![0.5, 0.2]);
        let b = Grid::new(2, 1, vec![0.25, 0.2]);
        let m = harmonic_mean(&[a, b]);
        assert!((m.values[0] - 2.0 / 6.0).abs() < 1e-6);
        assert!((m.values[1] - 0.2).abs() < 1e-6);
    }

    #[test]
    fn bilinear_matches_align_corners_false() {
        // torch.nn.functional.interpolate([[0, 1]], size=4, mode='linear') = [0, .25, .75, 1]
        let m = resize_bilinear(&Grid::new(2, 1, vec![0.0, 1.0]), 4, 1);
        let expected = [0.0, 0.25, 0.75, 1.0];
        for (v, e) in m.values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-6, "{:?}", m.values);
        }
    }

    #[test]
    fn gaussian_keeps_mass_and_constants() {
        let constant = gaussian_blur(&Grid::new(7, 5, vec![0.3; 35]), 4.0);
        assert!(constant.values.iter().all(|v| (v - 0.3).abs() < 1e-6));
        let mut spike = vec![0f32; 41 * 41];
        spike[20 * 41 + 20] = 1.0;
        let blurred = gaussian_blur(&Grid::new(41, 41, spike), 4.0);
        let total: f32 = blurred.values.iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        // Peak of a 2-D Gaussian with sigma 4: 1 / (2 pi 16) ~ 0.00995.
        assert!((blurred.at(20, 20) - 0.00995).abs() < 3e-4, "{}", blurred.at(20, 20));
    }

    #[test]
    fn gaussian_matches_the_direct_sum_with_reflection() {
        // A radius of 9 on a 7x4 grid reflects more than once on every side.
        let (w, h, sigma) = (7usize, 4usize, 2.2f32);
        let map = Grid::new(w, h, (0..w * h).map(|i| ((i * 37) % 11) as f32 / 10.0).collect());
        let radius = (4.0 * sigma + 0.5) as isize;
        let weight = |d: isize| (-0.5 * (d as f32 / sigma).powi(2)).exp();
        let total: f32 = (-radius..=radius).map(weight).sum::<f32>().powi(2);
        let reflect = |i: isize, n: usize| {
            let (n, mut i) = (n as isize, i.rem_euclid(2 * n as isize));
            if i >= n {
                i = 2 * n - 1 - i;
            }
            i as usize
        };
        let blurred = gaussian_blur(&map, sigma);
        for y in 0..h {
            for x in 0..w {
                let mut direct = 0.0;
                for dy in -radius..=radius {
                    for dx in -radius..=radius {
                        let v = map.at(reflect(x as isize + dx, w), reflect(y as isize + dy, h));
                        direct += weight(dx) * weight(dy) * v / total;
                    }
                }
                assert!((blurred.at(x, y) - direct).abs() < 1e-5, "({x}, {y}): {} vs {direct}", blurred.at(x, y));
            }
        }
    }
}
