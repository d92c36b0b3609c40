//! A decision threshold from good images only: no anomalous sample is needed.
//!
//! The app's "Both from good references / from a folder" and `alfa threshold` run the
//! same code: [`Detector::score_good_images`] scores the good images (a good image that
//! is also a reference against the other references), [`fit_thresholds`] sets both
//! thresholds with [`threshold_at_fpr`].

use std::path::{Path, PathBuf};

use super::DetectError;
use super::engine::{ClassPrompts, Detector};
use super::bank::ReferenceBank;
use super::settings::DetectSettings;
use crate::clip;

/// An image's decision: NG (not good) at `score >= threshold`, else OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "NG")]
    Ng,
}

impl Verdict {
    pub fn of(score: f32, threshold: f32) -> Self {
        if score >= threshold { Verdict::Ng } else { Verdict::Ok }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Ng => "NG",
        }
    }
}

/// The threshold that keeps the false-positive rate on `good_scores` at or below `fpr`.
///
/// Convention: with `n` good scores and a target rate `f`, at most `k = floor(f * n)`
/// good images may score at or above the threshold (an image is NG at `score >=
/// threshold`). The threshold is the smallest `f32` above the `(k + 1)`-th highest good
/// score, the tightest value with that property, so every good image from the
/// `(k + 1)`-th highest down is OK. Ties at that score all stay OK, so fewer than `k`
/// images may be flagged. `None` for no scores, a non-finite score, or `f` outside `[0, 1)`.
pub fn threshold_at_fpr(good_scores: &[f32], fpr: f64) -> Option<f32> {
    if good_scores.is_empty() || !(0.0..1.0).contains(&fpr) || good_scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let mut sorted = good_scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    // The nudge keeps a typed rate such as 0.29 (28.999... x 100 in binary) at its decimal meaning.
    let allowed = ((fpr * sorted.len() as f64 + 1e-9).floor() as usize).min(sorted.len() - 1);
    Some(sorted[allowed].next_up())
}

/// Good images scored for a threshold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GoodScores {
    /// Each readable good image's image score and the largest value of its map.
    pub scores: Vec<(PathBuf, f32, f32)>,
    /// Good images that could not be read, with the reason: left out, not fatal.
    pub skipped: Vec<(PathBuf, String)>,
    /// Good images that are copies of a reference (the same file is not counted):
    /// each was scored against the other references.
    pub overlapping: usize,
}

/// Thresholds from good images and the scores they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdFit {
    /// On image scores (OK/NG).
    pub image: f32,
    /// On map values (outlines, masks): at most the same share of good images has
    /// any region outlined.
    pub region: f32,
    pub fpr: f64,
    /// Where the good images came from, for the label (`the references`, `folder good`).
    pub source: String,
    /// Each good image's image score and the largest value of its map.
    pub scores: Vec<(PathBuf, f32, f32)>,
    /// Good images that could not be read, with the reason; the threshold comes from
    /// the others.
    pub skipped: Vec<(PathBuf, String)>,
    /// What makes the thresholds less trustworthy than the rate says.
    pub warnings: Vec<String>,
}

impl Detector {
    /// Scores `good` with ALFA (the prompts `class`, the references `bank`, `settings`)
    /// for a threshold. A good image that is also a reference (the same file, or a copy
    /// with the same bytes) is scored against the other references: against a bank that
    /// holds it, it would score near zero. A file that cannot be read is left out and
    /// named. `progress(done, total)` comes before each image; `cancelled` stops with
    /// `DetectError::Cancelled` before the next one.
    pub fn score_good_images(
        &self,
        good: &[PathBuf],
        class: &ClassPrompts,
        bank: Option<&ReferenceBank>,
        settings: &DetectSettings,
        progress: &mut dyn FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GoodScores, DetectError> {
        let mut scored = GoodScores::default();
        let reference_contents: Vec<Option<Vec<u8>>> =
            bank.map_or_else(Vec::new, |b| b.files.iter().map(|f| std::fs::read(f).ok()).collect());
        for (n, path) in good.iter().enumerate() {
            if cancelled() {
                return Err(DetectError::Cancelled);
            }
            let same_file = bank.and_then(|b| b.files.iter().position(|f| f == path));
            let same_content = || {
                let bytes = std::fs::read(path).ok()?;
                reference_contents.iter().position(|r| r.as_deref() == Some(bytes.as_slice()))
            };
            let as_reference = same_file.or_else(same_content);
            if as_reference.is_some() && same_file.is_none() {
                scored.overlapping += 1;
            }
            let left_out = match (as_reference, bank) {
                (Some(i), Some(bank)) => Some(bank.without(i)?.ok_or_else(|| {
                    DetectError::Threshold(
                        "a reference cannot be scored against the others with only one reference: add another".into(),
                    )
                })?),
                _ => None,
            };
            progress(n + 1, good.len());
            // One unreadable file in a folder of good images should not cost the user
            // the threshold: it is left out and named.
            let image = match clip::open_image(path) {
                Ok(image) => image,
                Err(e) => {
                    scored.skipped.push((path.clone(), e.to_string()));
                    continue;
                }
            };
            let detection = self
                .detect_with_references(&image, class, left_out.as_ref().or(bank), settings)
                .map_err(|e| DetectError::Threshold(format!("{}: {e}", path.display())))?;
            scored.scores.push((path.clone(), detection.image_score, detection.map.max()));
        }
        Ok(scored)
    }
}

/// Both thresholds at `fpr` from good images' scores: OK/NG on the image scores, the
/// region threshold on the maps' maxima (see [`threshold_at_fpr`]), with warnings when
/// the rate cannot be met or good images were references too.
pub fn fit_thresholds(good: GoodScores, fpr: f64, source: &str) -> Result<ThresholdFit, DetectError> {
    let GoodScores { scores, skipped, overlapping } = good;
    if let (true, Some((_, reason))) = (scores.is_empty(), skipped.first()) {
        return Err(DetectError::Threshold(format!(
            "none of the {} good images could be read, e.g. {reason}",
            skipped.len()
        )));
    }
    let fit = |values: Vec<f32>| {
        threshold_at_fpr(&values, fpr)
            .ok_or_else(|| DetectError::Threshold(format!("no threshold from {} good image(s) at FPR {fpr}", values.len())))
    };
    let mut warnings = Vec::new();
    if overlapping > 0 {
        warnings.push(format!(
            "{overlapping} of the good images are references too: each was scored against the other references"
        ));
    }
    if fpr > 0.0 && (scores.len() as f64) * fpr < 1.0 {
        warnings.push(format!(
            "only {} good images: a rate of {}% needs at least {} to allow any, so the thresholds sit above every good image",
            scores.len(),
            fpr * 100.0,
            (1.0 / fpr).ceil()
        ));
    }
    let image = fit(scores.iter().map(|s| s.1).collect())?;
    let region = fit(scores.iter().map(|s| s.2).collect())?;
    Ok(ThresholdFit { image, region, fpr, source: source.to_owned(), scores, skipped, warnings })
}

/// How good images' source reads in labels: `folder good` for a folder, the file's
/// name for one file, `N files` for several.
pub fn describe_sources(paths: &[&Path]) -> String {
    let name = |p: &Path| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
    match paths {
        [one] if one.is_dir() => format!("folder {}", name(one)),
        [one] => name(one),
        many => many.iter().map(|p| name(p)).collect::<Vec<_>>().join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(scores: &[f32], threshold: f32) -> usize {
        scores.iter().filter(|&&s| s >= threshold).count()
    }

    #[test]
    fn at_most_floor_fpr_times_n_good_images_are_flagged() {
        let scores: Vec<f32> = (0..200).map(|i| ((i * 37) % 200) as f32 / 200.0).collect();
        for (fpr, allowed) in [(0.0, 0), (0.01, 2), (0.05, 10), (0.104, 20), (0.29, 58)] {
            let t = threshold_at_fpr(&scores, fpr).unwrap();
            assert_eq!(flagged(&scores, t), allowed, "fpr {fpr}");
            // The tightest such threshold: one step lower flags one more image.
            assert_eq!(flagged(&scores, t.next_down()), allowed + 1, "fpr {fpr}");
        }
    }

    #[test]
    fn zero_fpr_sits_just_above_the_highest_good_score() {
        let t = threshold_at_fpr(&[0.2, 0.71, 0.5], 0.0).unwrap();
        assert!(t > 0.71 && t < 0.7101, "{t}");
        // 12 images at 1%: floor(0.12) = 0 may be flagged.
        let twelve: Vec<f32> = (0..12).map(|i| i as f32 / 10.0).collect();
        assert_eq!(flagged(&twelve, threshold_at_fpr(&twelve, 0.01).unwrap()), 0);
    }

    #[test]
    fn a_fit_sets_both_thresholds_and_warns_when_the_rate_cannot_be_met() {
        let scores: Vec<(PathBuf, f32, f32)> =
            (0..5).map(|i| (PathBuf::from(format!("{i}.png")), i as f32 / 10.0, 0.5 + i as f32 / 20.0)).collect();
        let good = GoodScores { scores: scores.clone(), skipped: vec![("x.png".into(), "bad".into())], overlapping: 1 };
        let fit = fit_thresholds(good, 0.2, "folder good").unwrap();
        assert_eq!(fit.image, threshold_at_fpr(&[0.0, 0.1, 0.2, 0.3, 0.4], 0.2).unwrap());
        assert_eq!(fit.region, threshold_at_fpr(&[0.5, 0.55, 0.6, 0.65, 0.7], 0.2).unwrap());
        assert_eq!(flagged(&[0.0, 0.1, 0.2, 0.3, 0.4], fit.image), 1);
        assert_eq!((fit.skipped.len(), fit.warnings.len()), (1, 1), "{:?}", fit.warnings);
        let few = fit_thresholds(GoodScores { scores, ..Default::default() }, 0.01, "x").unwrap();
        assert!(few.warnings[0].contains("only 5 good images"), "{:?}", few.warnings);
        let none = GoodScores { skipped: vec![("a.png".into(), "not an image".into())], ..Default::default() };
        assert!(fit_thresholds(none, 0.01, "x").unwrap_err().to_string().contains("none of the 1 good images"));
    }

    #[test]
    fn ties_stay_ok_and_bad_input_gives_none() {
        let t = threshold_at_fpr(&[0.5, 0.5, 0.5, 0.1], 0.5).unwrap();
        assert_eq!(flagged(&[0.5, 0.5, 0.5, 0.1], t), 0);
        assert_eq!(threshold_at_fpr(&[], 0.01), None);
        assert_eq!(threshold_at_fpr(&[0.3], 1.0), None);
        assert_eq!(threshold_at_fpr(&[0.3], -0.1), None);
        assert_eq!(threshold_at_fpr(&[f32::NAN], 0.1), None);
    }
}
