//! Few-shot detection on DINOv2 patch features (AnomalyDINO, Damm et al., WACV 2025;
//! METHOD section 5b): each query patch against the nearest patch of the references'
//! bank, by cosine. ALFA fuses the resulting map with its zero-shot map
//! (`Detector::detect_with_references`); [`AnomalyDino`] is the method alone, without
//! text, for comparison.
//!
//! Not done (AnomalyDINO's optional parts): background masking of the patches (PCA of
//! the features, per class) and rotation augmentation of the references.

use std::path::PathBuf;

use image::DynamicImage;

use super::baselines::image_map;
use super::engine::{DetectSettings, Detector, RefsBackbone};
use super::maps::Grid;
use super::memory::Nearest;
use super::method::{ClassSpec, Method, MethodKind, Scored};
use super::references::ReferenceBank;
use super::DetectError;
use crate::dinov2::GRID;

/// A query image's patches against a DINOv2 bank.
pub struct PatchMatch {
    /// Each patch's nearest bank patch, row-major over the 37 x 37 grid.
    pub nearest: Vec<Nearest>,
}

impl PatchMatch {
    /// The query's patches against `bank` (a DINOv2 bank, else an error).
    pub fn of(detector: &Detector, bank: &ReferenceBank, image: &DynamicImage) -> Result<Self, DetectError> {
        let (Some(dino), Some(patches)) = (detector.dinov2(), bank.dinov2_patches()) else {
            return Err(DetectError::References(
                "a DINOv2 reference bank and the DINOv2 model are needed to match DINOv2 patches".into(),
            ));
        };
        Ok(Self { nearest: patches.nearest(&dino.patch_features(image)?)? })
    }

    /// The patch map [GRID x GRID] of `score` applied to each nearest similarity.
    pub fn map(&self, score: impl Fn(f32) -> f32) -> Grid {
        Grid::new(GRID, GRID, self.nearest.iter().map(|n| score(n.similarity)).collect())
    }
}

/// AnomalyDINO's patch score: the cosine distance to the nearest reference patch.
pub fn cosine_distance(similarity: f32) -> f32 {
    1.0 - similarity
}

/// AnomalyDINO's image score: the mean of the top 1% of the patch scores (at least
/// one: the maximum of fewer than 100 patches; 13 of DINOv2's 1369).
pub fn mean_of_top_percent(scores: &[f32]) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let count = (scores.len() / 100).max(1).min(sorted.len());
    if count == 0 {
        return 0.0;
    }
    sorted[..count].iter().sum::<f32>() / count as f32
}

/// AnomalyDINO without text: DINOv2 patches against the references' patches. Few-shot
/// only: without references there is nothing to compare with.
pub struct AnomalyDino {
    detector: Detector,
    settings: DetectSettings,
    bank: Option<ReferenceBank>,
}

impl AnomalyDino {
    /// `detector` must carry the DINOv2 model (`Detector::with_dinov2`).
    pub fn new(detector: Detector, settings: DetectSettings) -> Result<Self, DetectError> {
        if detector.dinov2().is_none() {
            return Err(DetectError::Settings("anomalydino needs the DINOv2 model, and none is loaded".into()));
        }
        Ok(Self { detector, settings: DetectSettings { refs_backbone: RefsBackbone::Dinov2, ..settings }, bank: None })
    }
}

impl Method for AnomalyDino {
    fn kind(&self) -> MethodKind {
        MethodKind::Anomalydino
    }

    fn prepare(&mut self, _class: &ClassSpec, references: &[DynamicImage]) -> Result<(), DetectError> {
        if references.is_empty() {
            return Err(DetectError::References(
                "anomalydino compares images with normal references, and none were given (add some with `alfa refs add`, or give --refs / --shots)"
                    .into(),
            ));
        }
        let named: Vec<(PathBuf, DynamicImage)> =
            references.iter().enumerate().map(|(i, image)| (PathBuf::from(format!("reference {i}")), image.clone())).collect();
        self.bank = self.detector.reference_bank(&named, &self.settings, |_, _| ())?.bank;
        Ok(())
    }

    fn score(&mut self, image: &DynamicImage) -> Result<Scored, DetectError> {
        let bank = self.bank.as_ref().ok_or(DetectError::NotPrepared)?;
        let patch_map = PatchMatch::of(&self.detector, bank, image)?.map(cosine_distance);
        Ok(Scored { image_score: mean_of_top_percent(&patch_map.values), map: image_map(&patch_map, image, self.settings.sigma) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_score_is_the_mean_of_the_top_percent() {
        // 1369 patches: the top 13.
        let mut scores = vec![0.1f32; 1369];
        for (i, s) in scores.iter_mut().take(13).enumerate() {
            *s = 0.5 + i as f32 * 0.01;
        }
        scores[100] = 0.2; // the 14th: not counted
        let expected = (0..13).map(|i| 0.5 + i as f32 * 0.01).sum::<f32>() / 13.0;
        assert!((mean_of_top_percent(&scores) - expected).abs() < 1e-6);
        // Under 100 patches: the maximum.
        assert_eq!(mean_of_top_percent(&[0.3, 0.9, 0.1]), 0.9);
        assert_eq!(mean_of_top_percent(&[]), 0.0);
        assert_eq!(cosine_distance(1.0), 0.0);
    }
}
