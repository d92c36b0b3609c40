//! A decision threshold from good images only: no anomalous sample is needed.

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
    fn ties_stay_ok_and_bad_input_gives_none() {
        let t = threshold_at_fpr(&[0.5, 0.5, 0.5, 0.1], 0.5).unwrap();
        assert_eq!(flagged(&[0.5, 0.5, 0.5, 0.1], t), 0);
        assert_eq!(threshold_at_fpr(&[], 0.01), None);
        assert_eq!(threshold_at_fpr(&[0.3], 1.0), None);
        assert_eq!(threshold_at_fpr(&[0.3], -0.1), None);
        assert_eq!(threshold_at_fpr(&[f32::NAN], 0.1), None);
    }
}
