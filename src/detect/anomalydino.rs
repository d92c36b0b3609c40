//! Few-shot detection on DINOv2 patch features (AnomalyDINO, Damm et al., WACV 2025;
//! METHOD section 5b): each query patch against the nearest patch of the references'
//! bank, by cosine. ALFA fuses the resulting map with its zero-shot map
//! (`Detector::detect_with_references`); [`AnomalyDino`] is the method alone, without
//! text, for comparison.
//!
//! Not done (AnomalyDINO's optional parts): background masking of the patches (PCA of
//! the features, per class) and rotation augmentation of the references.

use std::path::PathBuf;
use std::sync::Arc;

use image::DynamicImage;

use super::bank::{PatchMatch, ReferenceBank};
use super::engine::Detector;
use super::memory::{cosine_distance, mean_of_top_percent};
use super::method::{ClassSpec, Method, MethodKind, Scored};
use super::settings::{DetectSettings, RefsBackbone};
use super::DetectError;

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
        let patch_map = PatchMatch::of(self.detector.dinov2().map(Arc::as_ref), bank, image)?.map(cosine_distance);
        Scored::from_patch_map(mean_of_top_percent(&patch_map.values), &patch_map, image, self.settings.sigma)
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
