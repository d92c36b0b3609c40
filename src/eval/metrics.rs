//! Detection metrics as the references compute them (METHOD section 7).
//!
//! - AUROC: scikit-learn `roc_auc_score` (trapezoid under the ROC curve).
//! - AUPR: scikit-learn `average_precision_score`, `sum_n (R_n - R_{n-1}) P_n`.
//! - F1-max: anomalib's, the maximum of `2PR / (P + R)` over the precision-recall curve.
//! - PRO: the MVTec AD reference (`compute_pro` + `trapezoid` in its
//!   `evaluate_experiment.py` / `generic_util.py`): ground-truth regions are the
//!   8-connected components of each mask, the curve of mean per-region overlap against
//!   the false-positive rate over all normal pixels is integrated with the trapezoid rule
//!   up to FPR 0.3 (interpolating the point at 0.3 when no threshold hits it exactly)
//!   and divided by 0.3.
//!
//! Tied scores form one threshold everywhere, as in scikit-learn and the MVTec reference.
//! All metrics lie in [0, 1]. Inputs with a non-finite score, no samples, or only one
//! class are errors ([`EvalError`]), never a panic or a NaN.

use rayon::slice::ParallelSliceMut;

use super::EvalError;

/// The false-positive rate up to which the PRO curve is integrated (MVTec AD protocol).
pub const PRO_FPR_LIMIT: f64 = 0.3;

/// Bits of the order-preserving score key kept by the histogram (bounded-memory) mode:
/// 2^24 bins, i.e. each bin spans 2^-15 of its binary order of magnitude
/// (a score near 0.7 is resolved to 1.5e-5, one near 0.01 to 3e-7).
pub const HISTOGRAM_BITS: u32 = 24;

/// Default memory the exact pixel mode may use before switching to the histogram:
/// 1 GiB, 8 bytes a pixel, i.e. 128 maps of 1024 x 1024.
pub const DEFAULT_EXACT_BUDGET_BYTES: usize = 1 << 30;

/// Image-level metrics of one class.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageMetrics {
    pub auroc: f64,
    /// Average precision, as scikit-learn's `average_precision_score`.
    pub aupr: f64,
    pub f1_max: f64,
    /// The score threshold (`score >= threshold` is anomalous) that reaches `f1_max`;
    /// of equal maxima, the lowest threshold (numpy's `argmax` on the increasing curve).
    pub f1_threshold: f32,
}

impl ImageMetrics {
    /// Metrics of image scores (higher = more anomalous) against labels (`true` = anomalous).
    pub fn compute(scores: &[f32], labels: &[bool]) -> Result<Self, EvalError> {
        const WHAT: &str = "image scores";
        if scores.len() != labels.len() {
            return Err(EvalError::LengthMismatch {
                what: WHAT,
                expected: scores.len(),
                found: labels.len(),
            });
        }
        check_finite(WHAT, scores)?;
        let mut packed: Vec<u64> = scores
            .iter()
            .zip(labels)
            .map(|(&score, &anomalous)| pack(score, u32::from(anomalous)))
            .collect();
        let positives = labels.iter().filter(|&&l| l).count() as u64;
        let totals = Totals {
            positives,
            negatives: labels.len() as u64 - positives,
            regions: positives,
        };
        totals.check(WHAT)?;
        packed.sort_unstable();
        let curves = Curves::from_groups(exact_groups(&packed), totals);
        Ok(Self {
            auroc: curves.auroc,
            aupr: curves.average_precision,
            f1_max: curves.f1_max,
            f1_threshold: curves.f1_threshold,
        })
    }
}

/// Pixel-level metrics of one class, over all its test maps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelMetrics {
    pub auroc: f64,
    pub f1_max: f64,
    /// Lowest score threshold reaching `f1_max` (a bin's lower edge in histogram mode).
    pub f1_threshold: f32,
    /// Normalised area under the PRO curve up to FPR 0.3.
    pub pro: f64,
    /// `true` when computed from every pixel's exact score, `false` when the memory
    /// budget forced the histogram (see [`PixelMetricsAccumulator`]).
    pub exact: bool,
}

/// Collects anomaly maps and masks one image at a time, then computes [`PixelMetrics`].
///
/// Memory stays bounded: each pixel is kept exactly (its score and the size of its
/// ground-truth region, 8 bytes) while that fits the exact budget
/// ([`DEFAULT_EXACT_BUDGET_BYTES`] unless set); past it, everything moves to a histogram
/// over the order-preserving bits of the f32 score ([`HISTOGRAM_BITS`], 2^24 bins of
/// 24 bytes = 402 MB whatever the number of maps). A bin keeps its normal and defect
/// pixel counts and the sum of `1 / region size` of its defect pixels, which is all
/// ROC, precision-recall and PRO curves need (the PRO curve is the running sum of
/// those weights over the number of regions), so the histogram needs no score range
/// given up front. Its only approximation is that scores sharing a bin count as tied.
#[derive(Debug)]
pub struct PixelMetricsAccumulator {
    store: Store,
    exact_budget_bytes: usize,
    totals: Totals,
}

#[derive(Debug)]
enum Store {
    /// Ascending after sorting: `pack(score, region size or 0)` per pixel.
    Exact(Vec<u64>),
    Histogram(Vec<Group>),
}

impl Default for PixelMetricsAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl PixelMetricsAccumulator {
    /// An empty accumulator with the default exact budget.
    pub fn new() -> Self {
        Self {
            store: Store::Exact(Vec::new()),
            exact_budget_bytes: DEFAULT_EXACT_BUDGET_BYTES,
            totals: Totals::default(),
        }
    }

    /// Sets how many bytes the exact mode may hold (8 per pixel) before switching to the
    /// histogram; 0 uses the histogram from the start.
    pub fn with_exact_budget(mut self, bytes: usize) -> Self {
        self.exact_budget_bytes = bytes;
        self
    }

    /// Adds one image: its anomaly map and its ground-truth mask (`true` = defect), both
    /// row-major `width` x `height`. A normal image has an all-`false` mask.
    pub fn add(
        &mut self,
        map: &[f32],
        mask: &[bool],
        width: usize,
        height: usize,
    ) -> Result<(), EvalError> {
        const WHAT: &str = "anomaly map";
        let pixels = width * height;
        for (found, what) in [(map.len(), WHAT), (mask.len(), "mask")] {
            if found != pixels {
                return Err(EvalError::LengthMismatch {
                    what,
                    expected: pixels,
                    found,
                });
            }
        }
        check_finite(WHAT, map)?;
        let regions = label_regions(mask, width, height);
        self.totals.regions += regions.sizes.len() as u64;
        let defect_pixels = mask.iter().filter(|&&m| m).count() as u64;
        self.totals.positives += defect_pixels;
        self.totals.negatives += pixels as u64 - defect_pixels;
        let region_size = |i: usize| match regions.labels[i] {
            0 => 0,
            label => regions.sizes[label as usize - 1],
        };

        if let Store::Exact(packed) = &self.store {
            let needed = (packed.len() + pixels) * size_of::<u64>();
            if needed > self.exact_budget_bytes {
                self.store = Store::Histogram(to_histogram(packed));
            }
        }
        match &mut self.store {
            Store::Exact(packed) => {
                packed.extend(
                    map.iter()
                        .enumerate()
                        .map(|(i, &s)| pack(s, region_size(i))),
                );
            }
            Store::Histogram(bins) => {
                for (i, &score) in map.iter().enumerate() {
                    bins[histogram_bin(score_key(score))].add_sample(region_size(i));
                }
            }
        }
        Ok(())
    }

    /// Pixel AUROC, F1-max and PRO over every added image.
    pub fn finish(self) -> Result<PixelMetrics, EvalError> {
        self.totals.check("pixels")?;
        if self.totals.regions == 0 {
            return Err(EvalError::SingleClass {
                what: "pixels",
                positives: 0,
                negatives: self.totals.negatives,
            });
        }
        let (curves, exact) = match self.store {
            Store::Exact(mut packed) => {
                packed.par_sort_unstable();
                (
                    Curves::from_groups(exact_groups(&packed), self.totals),
                    true,
                )
            }
            Store::Histogram(bins) => {
                let shift = 32 - HISTOGRAM_BITS;
                let groups = bins
                    .into_iter()
                    .enumerate()
                    .rev()
                    .filter(|(_, g)| g.negatives + g.positives > 0)
                    .map(|(bin, g)| (key_score((bin as u32) << shift), g));
                (Curves::from_groups(groups, self.totals), false)
            }
        };
        Ok(PixelMetrics {
            auroc: curves.auroc,
            f1_max: curves.f1_max,
            f1_threshold: curves.f1_threshold,
            pro: curves.pro,
            exact,
        })
    }
}

fn check_finite(what: &'static str, scores: &[f32]) -> Result<(), EvalError> {
    if scores.is_empty() {
        return Err(EvalError::Empty { what });
    }
    match scores.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(EvalError::NonFinite {
            what,
            index,
            value: scores[index],
        }),
        None => Ok(()),
    }
}

/// Sample counts of a whole evaluation; `regions` weights the PRO curve.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    positives: u64,
    negatives: u64,
    regions: u64,
}

impl Totals {
    fn check(&self, what: &'static str) -> Result<(), EvalError> {
        if self.positives + self.negatives == 0 {
            return Err(EvalError::Empty { what });
        }
        if self.positives == 0 || self.negatives == 0 {
            return Err(EvalError::SingleClass {
                what,
                positives: self.positives,
                negatives: self.negatives,
            });
        }
        Ok(())
    }
}

/// The samples at one threshold: one distinct score, or one histogram bin.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    negatives: u64,
    positives: u64,
    /// Sum of `1 / region size` over the positives (the PRO curve's increment).
    region_weight: f64,
}

impl Group {
    /// `region_size` 0 is a negative; else a positive in a region of that many pixels.
    fn add_sample(&mut self, region_size: u32) {
        if region_size == 0 {
            self.negatives += 1;
        } else {
            self.positives += 1;
            self.region_weight += 1.0 / f64::from(region_size);
        }
    }
}

/// A key whose unsigned order is the numeric order of finite scores (-0 and +0 equal).
fn score_key(score: f32) -> u32 {
    let bits = if score == 0.0 { 0 } else { score.to_bits() };
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`score_key`].
fn key_score(key: u32) -> f32 {
    f32::from_bits(if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

fn pack(score: f32, payload: u32) -> u64 {
    (u64::from(score_key(score)) << 32) | u64::from(payload)
}

fn histogram_bin(key: u32) -> usize {
    (key >> (32 - HISTOGRAM_BITS)) as usize
}

fn to_histogram(packed: &[u64]) -> Vec<Group> {
    let mut bins = vec![Group::default(); 1 << HISTOGRAM_BITS];
    for &p in packed {
        bins[histogram_bin((p >> 32) as u32)].add_sample(p as u32);
    }
    bins
}

/// Groups of equal scores, highest first, from ascending packed samples whose payload
/// is 0 for a negative and the region size for a positive (1 for an image).
fn exact_groups(ascending: &[u64]) -> impl Iterator<Item = (f32, Group)> + '_ {
    ascending
        .chunk_by(|a, b| a >> 32 == b >> 32)
        .rev()
        .map(|chunk| {
            let mut group = Group::default();
            for &p in chunk {
                group.add_sample(p as u32);
            }
            (key_score((chunk[0] >> 32) as u32), group)
        })
}

/// ROC, precision-recall and PRO summaries from one pass over threshold groups.
struct Curves {
    auroc: f64,
    average_precision: f64,
    f1_max: f64,
    f1_threshold: f32,
    pro: f64,
}

impl Curves {
    /// `groups` in decreasing score order, each with its threshold score.
    fn from_groups(groups: impl Iterator<Item = (f32, Group)>, totals: Totals) -> Self {
        let (p, n) = (totals.positives, totals.negatives);
        let (mut tp, mut fp) = (0u64, 0u64);
        // Twice the ROC area in units of one (positive, negative) pair: exact in integers.
        let mut roc_area2: u128 = 0;
        let mut average_precision = 0.0;
        let (mut f1_max, mut f1_threshold) = (0.0, f32::NAN);
        let mut pro = ProIntegral::new();
        let mut region_weight = 0.0;
        for (threshold, g) in groups {
            let tp_prev = tp;
            tp += g.positives;
            fp += g.negatives;
            roc_area2 += u128::from(g.negatives) * u128::from(tp_prev + tp);
            let precision = tp as f64 / (tp + fp) as f64;
            average_precision += (tp - tp_prev) as f64 / p as f64 * precision;
            // 2PR/(P+R) written in counts; `>=` keeps the lowest of equal maxima.
            let f1 = 2.0 * tp as f64 / (2 * tp + fp + (p - tp)) as f64;
            if f1 >= f1_max {
                (f1_max, f1_threshold) = (f1, threshold);
            }
            region_weight += g.region_weight;
            pro.push(
                (fp as f64 / n as f64).min(1.0),
                (region_weight / totals.regions as f64).min(1.0),
            );
        }
        // The reference closes the curve at (1, 1).
        pro.push(1.0, 1.0);
        Self {
            auroc: roc_area2 as f64 / (2.0 * p as f64 * n as f64),
            average_precision,
            f1_max,
            f1_threshold,
            pro: pro.area / PRO_FPR_LIMIT,
        }
    }
}

/// The MVTec reference `trapezoid(fprs, pros, x_max=0.3)`, one point at a time: the
/// trapezoid rule over points with FPR <= 0.3, plus, when no point lies exactly at 0.3,
/// the piece up to 0.3 under the line to the first point past it.
struct ProIntegral {
    last: (f64, f64),
    area: f64,
    done: bool,
}

impl ProIntegral {
    fn new() -> Self {
        Self {
            last: (0.0, 0.0),
            area: 0.0,
            done: false,
        }
    }

    fn push(&mut self, fpr: f64, pro: f64) {
        if self.done {
            return;
        }
        let (x0, y0) = self.last;
        if fpr <= PRO_FPR_LIMIT {
            self.area += 0.5 * (y0 + pro) * (fpr - x0);
            self.last = (fpr, pro);
            return;
        }
        if x0 < PRO_FPR_LIMIT {
            let y_limit = y0 + (pro - y0) * (PRO_FPR_LIMIT - x0) / (fpr - x0);
            self.area += 0.5 * (y_limit + y0) * (PRO_FPR_LIMIT - x0);
        }
        self.done = true;
    }
}

/// Per-pixel 8-connected region labels (0 = normal, else 1-based) and region sizes.
struct Regions {
    labels: Vec<u32>,
    sizes: Vec<u32>,
}

/// Connected components of a mask with the 3x3 structure of ones
/// (`scipy.ndimage.label(mask, np.ones((3, 3)))`, as the MVTec reference).
fn label_regions(mask: &[bool], width: usize, height: usize) -> Regions {
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        sizes.push(0u32);
        let label = sizes.len() as u32;
        labels[start] = label;
        stack.push(start);
        while let Some(i) = stack.pop() {
            sizes[label as usize - 1] += 1;
            let (x, y) = (i % width, i / width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let j = ny * width + nx;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = label;
                        stack.push(j);
                    }
                }
            }
        }
    }
    Regions { labels, sizes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_key_orders_like_the_scores() {
        let scores = [
            -3.5e30f32,
            -1.0,
            -1e-30,
            -0.0,
            0.0,
            1e-38,
            0.25,
            0.5,
            7.0,
            f32::MAX,
        ];
        for pair in scores.windows(2) {
            assert!(score_key(pair[0]) <= score_key(pair[1]), "{pair:?}");
            assert_eq!(score_key(pair[0]) == score_key(pair[1]), pair[0] == pair[1]);
        }
        for s in scores {
            assert_eq!(key_score(score_key(s)), s);
        }
    }

    #[test]
    fn diagonal_pixels_are_one_region() {
        #[rustfmt::skip]
        let mask = [
            true,  false, false, false,
            false, true,  false, true,
            false, false, false, true,
        ];
        let regions = label_regions(&mask, 4, 3);
        assert_eq!(regions.sizes, vec![2, 2]);
        assert_eq!(regions.labels, vec![1, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 2]);
    }

    #[test]
    fn hand_computed_image_metrics() {
        // Descending: 0.9 (+), 0.8 (-), 0.7 (+ and -, tied), 0.1 (-). P = 2, N = 3.
        let scores = [0.9, 0.8, 0.7, 0.7, 0.1];
        let labels = [true, false, true, false, false];
        let m = ImageMetrics::compute(&scores, &labels).unwrap();
        // ROC points (0,.5) (1/3,.5) (2/3,1) (1,1): area 1/3*.5 + 1/3*.75 + 1/3 = 0.75.
        assert!((m.auroc - 0.75).abs() < 1e-12, "{}", m.auroc);
        // AP: .5 * 1 + .5 * (2/4).
        assert!((m.aupr - 0.75).abs() < 1e-12, "{}", m.aupr);
        // F1 at 0.9: 2/3; at 0.7: 2*2/(4+2+0) = 2/3 too: the lower threshold wins.
        assert!((m.f1_max - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.f1_threshold, 0.7);
    }

    #[test]
    fn degenerate_inputs_are_errors() {
        assert!(matches!(
            ImageMetrics::compute(&[], &[]),
            Err(EvalError::Empty { .. })
        ));
        assert!(matches!(
            ImageMetrics::compute(&[0.1, 0.2], &[true, true]),
            Err(EvalError::SingleClass {
                positives: 2,
                negatives: 0,
                ..
            })
        ));
        assert!(matches!(
            ImageMetrics::compute(&[0.1, f32::NAN], &[true, false]),
            Err(EvalError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            ImageMetrics::compute(&[0.1], &[true, false]),
            Err(EvalError::LengthMismatch { .. })
        ));
        let mut acc = PixelMetricsAccumulator::new();
        acc.add(&[0.1, 0.2], &[false, false], 2, 1).unwrap();
        assert!(matches!(acc.finish(), Err(EvalError::SingleClass { .. })));
        assert!(matches!(
            PixelMetricsAccumulator::new().add(&[0.1], &[false, false], 2, 1),
            Err(EvalError::LengthMismatch {
                what: "anomaly map",
                ..
            })
        ));
    }
}
