//! Plain CLIP: two prompts, the global feature for the image score and the last
//! layer's patch tokens, taken through `ln_post` and `proj`, for the map; the softmax
//! at CLIP's logit scale, as zero-shot CLIP classifies (AnoVL's eqs. 1-2 take the
//! raw cosines instead: that is AnoVL's row, not this one).

use candle_core::Tensor;
use image::DynamicImage;

use super::{LabelPooling, label_features, logit_scale, patch_tokens, zero_shot_only};
use crate::clip::{VisionCapture, l2_normalize};
use crate::detect::engine::abnormal_probability;
use crate::detect::maps::Grid;
use crate::detect::{ClassSpec, DetectError, DetectSettings, Detector, Method, MethodKind, Scored};

pub struct ClipBaseline {
    detector: Detector,
    settings: DetectSettings,
    /// `[f+, f-]` of the prepared class.
    text: Option<Tensor>,
}

/// The two prompts of the CLIP baseline (note "an abnormal").
pub fn clip_prompts(name: &str) -> (String, String) {
    (format!("a photo of a normal {name}."), format!("a photo of an abnormal {name}."))
}

impl ClipBaseline {
    pub fn new(detector: Detector, settings: DetectSettings) -> Self {
        Self { detector, settings, text: None }
    }
}

impl Method for ClipBaseline {
    fn kind(&self) -> MethodKind {
        MethodKind::Clip
    }

    fn prepare(&mut self, class: &ClassSpec, references: &[DynamicImage]) -> Result<(), DetectError> {
        zero_shot_only(self.kind(), references)?;
        let (normal, abnormal) = clip_prompts(&class.name);
        self.text = Some(label_features(&mut self.detector, &[normal], &[abnormal], LabelPooling::UnitMean)?);
        Ok(())
    }

    fn score(&mut self, image: &DynamicImage) -> Result<Scored, DetectError> {
        let text = self.text.as_ref().ok_or(DetectError::NotPrepared)?;
        let vision = &self.detector.clip.model.vision;
        let scale = logit_scale(&self.detector);
        let out = vision.forward_detailed(&self.detector.pixels(image)?, VisionCapture::default())?;
        let image_score = abnormal_probability(&l2_normalize(&out.pooled)?, text, scale)?[0];
        let patches = l2_normalize(&vision.project(&patch_tokens(&out.tokens)?)?)?;
        let grid = vision.grid();
        let patch_map = Grid::new(grid, grid, abnormal_probability(&patches, text, scale)?);
        Scored::from_patch_map(image_score, &patch_map, image, self.settings.sigma)
    }
}
