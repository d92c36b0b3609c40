//! Run-time prompt adaptation: ALFA's contextual scoring (METHOD section 2).
//!
//! For one image, every prompt's similarity `d(t)` is placed against the interval of
//! similarities of each label. A prompt whose similarity lies inside the other
//! label's interval is ambiguous for this image (score 0) and is dropped; the farther
//! it lies from the other label's interval, the closer its score is to 1.

use serde::Serialize;

/// Closed interval `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub lo: f32,
    pub hi: f32,
}

impl Interval {
    /// The hull of `values`; `None` when empty.
    pub fn hull(values: &[f32]) -> Option<Self> {
        let lo = values.iter().copied().reduce(f32::min)?;
        let hi = values.iter().copied().reduce(f32::max)?;
        Some(Self { lo, hi })
    }

    /// `D(v, [a, b]) = max(0, a - v, v - b)`.
    pub fn distance(&self, v: f32) -> f32 {
        (self.lo - v).max(v - self.hi).max(0.0)
    }
}

/// One prompt's verdict for one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoredPrompt {
    /// Index into the label's prompt list.
    pub index: usize,
    /// `d(t)`: cosine between the image and the prompt.
    pub similarity: f32,
    /// `S_c(t)` in [0, 1).
    pub score: f32,
    pub kept: bool,
}

/// The outcome of contextual scoring for both labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextualSelection {
    pub normal_interval: Interval,
    pub abnormal_interval: Interval,
    pub normal: Vec<ScoredPrompt>,
    pub abnormal: Vec<ScoredPrompt>,
    /// No normal prompt passed the threshold: the best-scoring ones were kept.
    pub normal_fallback: bool,
    /// No abnormal prompt passed the threshold: the best-scoring ones were kept.
    pub abnormal_fallback: bool,
}

impl ContextualSelection {
    pub fn fallback(&self) -> bool {
        self.normal_fallback || self.abnormal_fallback
    }
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Scores both labels' prompts. `normal` and `abnormal` are the similarities
/// `d(t)` of each label's prompts; `k` the sharpness (1 in the paper), `tau` the
/// threshold (0). Returns `None` when a label has no prompts.
pub fn contextual_scoring(normal: &[f32], abnormal: &[f32], k: f32, tau: f32) -> Option<ContextualSelection> {
    let normal_interval = Interval::hull(normal)?;
    let abnormal_interval = Interval::hull(abnormal)?;
    let score = |d: f32| {
        let gap = (normal_interval.distance(d) - abnormal_interval.distance(d)).abs();
        2.0 * logistic(k * gap) - 1.0
    };
    let label = |sims: &[f32]| -> (Vec<ScoredPrompt>, bool) {
        let mut scored: Vec<ScoredPrompt> = sims
            .iter()
            .enumerate()
            .map(|(index, &similarity)| {
                let score = score(similarity);
                ScoredPrompt { index, similarity, score, kept: score > tau }
            })
            .collect();
        let fallback = !scored.iter().any(|p| p.kept);
        if fallback {
            // Keep the label's best prompts (all of those tied at the best score).
            let best = scored.iter().map(|p| p.score).fold(f32::NEG_INFINITY, f32::max);
            for p in &mut scored {
                p.kept = p.score == best;
            }
        }
        (scored, fallback)
    };
    let (normal, normal_fallback) = label(normal);
    let (abnormal, abnormal_fallback) = label(abnormal);
    Some(ContextualSelection {
        normal_interval,
        abnormal_interval,
        normal,
        abnormal,
        normal_fallback,
        abnormal_fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(gap: f32) -> f32 {
        2.0 / (1.0 + (-gap).exp()) - 1.0
    }

    #[test]
    fn distance_to_interval() {
        let i = Interval { lo: 0.2, hi: 0.3 };
        assert_eq!(i.distance(0.25), 0.0);
        assert!((i.distance(0.1) - 0.1).abs() < 1e-7);
        assert!((i.distance(0.5) - 0.2).abs() < 1e-7);
        assert_eq!(Interval::hull(&[]), None);
    }

    #[test]
    fn overlapping_prompts_are_dropped_and_separated_ones_kept() {
        // I+ = [0.20, 0.30], I- = [0.25, 0.40]: overlap [0.25, 0.30].
        let normal = [0.20, 0.27, 0.30];
        let abnormal = [0.25, 0.35, 0.40];
        let s = contextual_scoring(&normal, &abnormal, 1.0, 0.0).unwrap();
        assert_eq!(s.normal_interval, Interval { lo: 0.20, hi: 0.30 });
        assert_eq!(s.abnormal_interval, Interval { lo: 0.25, hi: 0.40 });
        // 0.20: D+ = 0, D- = 0.05 -> S_c = 2σ(0.05) - 1.
        assert!((s.normal[0].score - sc(0.05)).abs() < 1e-6);
        assert!(s.normal[0].kept);
        // 0.27 and 0.30 lie in both intervals: S_c = 0, dropped.
        assert_eq!((s.normal[1].score, s.normal[1].kept), (0.0, false));
        assert_eq!((s.normal[2].score, s.normal[2].kept), (0.0, false));
        // 0.25 is inside I+ too; 0.35 lies 0.05 above I+; 0.40 lies 0.10 above.
        assert!(!s.abnormal[0].kept);
        assert!((s.abnormal[1].score - sc(0.05)).abs() < 1e-6);
        assert!((s.abnormal[2].score - sc(0.10)).abs() < 1e-6);
        assert!(!s.fallback());
    }

    #[test]
    fn a_label_inside_the_other_falls_back_to_its_best_prompts() {
        // I- = [0.22, 0.24] lies inside I+ = [0.20, 0.30]: every abnormal S_c is 0.
        let normal = [0.20, 0.30, 0.26];
        let abnormal = [0.22, 0.24];
        let s = contextual_scoring(&normal, &abnormal, 1.0, 0.0).unwrap();
        assert!(s.abnormal_fallback && !s.normal_fallback);
        assert!(s.abnormal.iter().all(|p| p.score == 0.0 && p.kept), "ties at the best are all kept");
        // Normal prompts outside I- survive; 0.26 is outside [0.22, 0.24] by 0.02.
        assert!(s.normal.iter().all(|p| p.kept));
        assert!((s.normal[2].score - sc(0.02)).abs() < 1e-6);
    }

    #[test]
    fn fallback_keeps_only_the_best_when_scores_differ() {
        // k large and tau high: nothing passes, the best prompt of each label stays.
        let s = contextual_scoring(&[0.1, 0.2], &[0.5, 0.3], 1.0, 0.99).unwrap();
        assert!(s.normal_fallback && s.abnormal_fallback);
        assert_eq!(s.normal.iter().filter(|p| p.kept).map(|p| p.index).collect::<Vec<_>>(), vec![0]);
        assert_eq!(s.abnormal.iter().filter(|p| p.kept).map(|p| p.index).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn an_empty_label_gives_none() {
        assert!(contextual_scoring(&[], &[0.3], 1.0, 0.0).is_none());
        assert!(contextual_scoring(&[0.3], &[], 1.0, 0.0).is_none());
    }
}
