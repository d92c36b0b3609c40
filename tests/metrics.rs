//! Metrics against scikit-learn and the MVTec AD reference PRO
//! (`tests/fixtures/metrics/metric_cases.json`, from `generate_metric_fixtures.py`),
//! and the bounded-memory pixel mode against the exact one.

mod common;

use alfa::detect::maps::{Grid, gaussian_blur};
use alfa::eval::{ImageMetrics, PixelMetrics, PixelMetricsAccumulator};
use serde::Deserialize;

/// AUROC, AUPR and F1 are ratios of integer counts on both sides: they agree to rounding.
const COUNT_TOLERANCE: f64 = 1e-9;
/// The reference casts its FPRs to float32 (relative error 6e-8) before integrating PRO.
const PRO_TOLERANCE: f64 = 1e-6;

#[derive(Deserialize)]
struct Cases {
    image_cases: Vec<ImageCase>,
    pixel_cases: Vec<PixelCase>,
}

#[derive(Deserialize)]
struct ImageCase {
    name: String,
    scores: Vec<f64>,
    labels: Vec<u8>,
    expected: ImageExpected,
}

#[derive(Deserialize)]
struct ImageExpected {
    auroc: f64,
    aupr: f64,
    f1_max: f64,
    f1_threshold: f64,
}

#[derive(Deserialize)]
struct PixelCase {
    name: String,
    width: usize,
    height: usize,
    images: Vec<PixelImage>,
    expected: PixelExpected,
}

#[derive(Deserialize)]
struct PixelImage {
    map: Vec<f64>,
    mask: Vec<u8>,
}

#[derive(Deserialize)]
struct PixelExpected {
    auroc: f64,
    f1_max: f64,
    f1_threshold: f64,
    pro: f64,
}

fn cases() -> Cases {
    let path = common::fixtures().join("metrics/metric_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("metric_cases.json matches the generator's format")
}

/// The generator's scores are decimals that both sides read as f64 and round to f32.
fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

fn assert_close(case: &str, what: &str, found: f64, expected: f64, tolerance: f64) {
    assert!(
        (found - expected).abs() <= tolerance,
        "{case}: {what} = {found}, reference {expected} (|diff| {:e} > {tolerance:e})",
        (found - expected).abs()
    );
}

#[test]
fn image_metrics_match_scikit_learn() {
    let cases = cases();
    assert!(cases.image_cases.len() >= 8);
    for case in &cases.image_cases {
        let labels: Vec<bool> = case.labels.iter().map(|&l| l == 1).collect();
        let m = ImageMetrics::compute(&to_f32(&case.scores), &labels).unwrap();
        let e = &case.expected;
        assert_close(&case.name, "AUROC", m.auroc, e.auroc, COUNT_TOLERANCE);
        assert_close(&case.name, "AUPR", m.aupr, e.aupr, COUNT_TOLERANCE);
        assert_close(&case.name, "F1-max", m.f1_max, e.f1_max, COUNT_TOLERANCE);
        assert_eq!(
            m.f1_threshold, e.f1_threshold as f32,
            "{}: F1 threshold",
            case.name
        );
    }
}

fn pixel_metrics(case: &PixelCase, exact_budget: usize) -> PixelMetrics {
    let mut acc = PixelMetricsAccumulator::new().with_exact_budget(exact_budget);
    for image in &case.images {
        let mask: Vec<bool> = image.mask.iter().map(|&m| m == 1).collect();
        acc.add(&to_f32(&image.map), &mask, case.width, case.height)
            .unwrap();
    }
    acc.finish().unwrap()
}

/// Pixel AUROC, F1-max and PRO against the references (either accumulator mode).
fn assert_pixel_metrics_match(case: &PixelCase, m: &PixelMetrics) {
    let e = &case.expected;
    assert_close(&case.name, "pixel AUROC", m.auroc, e.auroc, COUNT_TOLERANCE);
    assert_close(&case.name, "pixel F1-max", m.f1_max, e.f1_max, COUNT_TOLERANCE);
    assert_close(&case.name, "PRO", m.pro, e.pro, PRO_TOLERANCE);
}

#[test]
fn pixel_metrics_match_scikit_learn_and_the_mvtec_pro() {
    let cases = cases();
    assert!(cases.pixel_cases.len() >= 5);
    for case in &cases.pixel_cases {
        let m = pixel_metrics(case, usize::MAX);
        assert!(m.exact);
        assert_pixel_metrics_match(case, &m);
        assert_eq!(
            m.f1_threshold, case.expected.f1_threshold as f32,
            "{}: F1 threshold",
            case.name
        );
    }
}

/// The fixture maps are multiples of 1e-4 below 4, where histogram bins are narrower
/// (2^-15 of the binade, at most 6.1e-5): no two distinct scores share a bin, so the
/// histogram mode must reproduce the references too.
#[test]
fn histogram_mode_matches_the_references_when_bins_separate_the_scores() {
    for case in &cases().pixel_cases {
        let m = pixel_metrics(case, 0);
        assert!(!m.exact);
        assert_pixel_metrics_match(case, &m);
    }
}

/// splitmix64: a fixed, dependency-free stream for synthetic maps.
struct Stream(u64);

impl Stream {
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Realistic class: 256 x 256 maps with elliptic defects, scores = blurred (defect
/// signal + noise), continuous f32 values in about [0, 1] with overlapping
/// normal and defect distributions, as detectors produce.
fn synthetic_class(images: usize) -> Vec<(Vec<f32>, Vec<bool>)> {
    let size = 256;
    let mut rng = Stream(7);
    (0..images)
        .map(|index| {
            let mut mask = vec![false; size * size];
            for _ in 0..index % 4 {
                let (cx, cy) = (
                    rng.next_unit() * 220.0 + 18.0,
                    rng.next_unit() * 220.0 + 18.0,
                );
                let (rx, ry) = (rng.next_unit() * 25.0 + 2.0, rng.next_unit() * 25.0 + 2.0);
                for (i, m) in mask.iter_mut().enumerate() {
                    let (x, y) = ((i % size) as f32, (i / size) as f32);
                    *m |= ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0;
                }
            }
            let raw: Vec<f32> = mask
                .iter()
                .map(|&m| f32::from(u8::from(m)) * 0.12 + rng.next_unit() * 0.8)
                .collect();
            let map = gaussian_blur(&Grid::new(size, size, raw), 2.0).values;
            (map, mask)
        })
        .collect()
}

/// Bounded (histogram) vs exact on realistic data: |diff| <= 1e-4.
///
/// Why it holds: the histogram's only change is that scores sharing a bin count as tied.
/// Bins span 2^-15 of the score's binade (<= 1.5e-5 here, scores < 1). AUROC moves by at
/// most half the fraction of (defect, normal) pairs sharing a bin, about
/// bin width x overlap of the two score densities (~1e-5 x a few); F1-max and PRO move by
/// at most the fraction of pixels in the one bin at the optimum / at FPR 0.3, which is
/// ~1e-5 of the pixels for a continuous score distribution.
#[test]
fn bounded_mode_agrees_with_exact_mode_on_realistic_maps() {
    let class = synthetic_class(24);
    let run = |budget: usize| {
        let mut acc = PixelMetricsAccumulator::new().with_exact_budget(budget);
        for (map, mask) in &class {
            acc.add(map, mask, 256, 256).unwrap();
        }
        acc.finish().unwrap()
    };
    let exact = run(usize::MAX);
    let bounded = run(0);
    // Switching to the histogram part-way must give what the histogram gives from the start.
    let switched = run(10 * 256 * 256 * 8);
    assert!(exact.exact && !bounded.exact && !switched.exact);
    assert_eq!(bounded, switched);
    // Not a trivial case: both defect-level and region-level figures are informative.
    assert!(exact.auroc > 0.7 && exact.auroc < 0.999, "{exact:?}");
    assert!(exact.pro > 0.3 && exact.pro < 0.99, "{exact:?}");
    let tolerance = 1e-4;
    for (what, e, b) in [
        ("AUROC", exact.auroc, bounded.auroc),
        ("F1-max", exact.f1_max, bounded.f1_max),
        ("PRO", exact.pro, bounded.pro),
    ] {
        assert_close("synthetic class", what, b, e, tolerance);
    }
    println!("exact {exact:?}\nbounded {bounded:?}");
}
