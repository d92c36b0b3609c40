//! WinCLIP (Jeong et al., CVPR 2023) and WinCLIP+ with normal references, as the
//! public implementation (anomalib's `WinClipModel`) computes them:
//! - zero-shot: the compositional prompt ensemble; window features in tokens mode at
//!   each scale (2 and 3), each window scored against `[f+, f-]`, harmonic
//!   aggregation per patch; the scales and the image scale (the global score
//!   everywhere) combined by harmonic mean; image score = global score;
//! - few-shot: memory banks of the references' window features per scale and of their
//!   last-layer patch tokens after `ln_post`; per scale the score `(1 - max cos) / 2`,
//!   harmonically aggregated for windows; arithmetic mean over the scales and the
//!   patch level; final map = (zero-shot + few-shot) / 2, image score =
//!   (global + max few-shot) / 2.

use candle_core::{IndexOp, Tensor};
use image::DynamicImage;

use super::{LabelPooling, label_features, logit_scale, patch_tokens};
use crate::clip::{VisionCapture, l2_normalize};
use crate::detect::engine::abnormal_probability;
use crate::detect::maps::{Grid, harmonic_mean, harmonic_patch_map, window_indices};
use crate::detect::memory::{MemoryBank, few_shot_score};
use crate::detect::{ClassSpec, DetectError, DetectSettings, Detector, Method, MethodKind, Scored, batching};

/// WinCLIP's state words (its public prompt lists, in order).
pub const NORMAL_STATES: [&str; 7] = [
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
];
pub const ABNORMAL_STATES: [&str; 4] = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"];

/// WinCLIP's 22 templates.
pub const TEMPLATES: [&str; 22] = [
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
];

/// Every template filled with every state of the class: (normal, abnormal).
pub fn winclip_prompts(name: &str) -> (Vec<String>, Vec<String>) {
    (compose(&TEMPLATES, &NORMAL_STATES, name), compose(&TEMPLATES, &ABNORMAL_STATES, name))
}

/// The prompts of `class` as anomalib's WinCLIP writes them: it fills in the dataset's
/// category, the folder id (`metal_nut`, `pcb1`), not a readable name.
pub fn class_prompts(class: &ClassSpec) -> (Vec<String>, Vec<String>) {
    winclip_prompts(&class.id)
}

/// `template.format(state.format(name))` for every template and state (shared with AnoVL).
pub(super) fn compose<T: AsRef<str>>(templates: &[T], states: &[&str], name: &str) -> Vec<String> {
    templates
        .iter()
        .flat_map(|t| states.iter().map(move |s| t.as_ref().replace("{}", &s.replace("{}", name))))
        .collect()
}

/// One image's features at every scale WinCLIP uses.
struct Features {
    /// Unit global feature [1, E].
    global: Tensor,
    /// Per window scale, the unit window features [K_s, E] (row-major window order).
    windows: Vec<Tensor>,
    /// The last layer's patch tokens after `ln_post` [M, W] (OpenCLIP's `output_tokens`).
    patches: Tensor,
}

/// The references' features, one bank per scale.
struct FewShotBanks {
    windows: Vec<MemoryBank>,
    patches: MemoryBank,
}

/// The patch-level (grid x grid) parts of WinCLIP's result.
#[derive(Debug, Clone)]
pub struct WinclipScores {
    /// Zero-shot image score (the global feature).
    pub global: f32,
    /// Zero-shot map: harmonic mean of the image scale and the window scales.
    pub zero_shot: Grid,
    /// WinCLIP+'s few-shot map when references were given.
    pub few_shot: Option<Grid>,
}

impl WinclipScores {
    /// WinCLIP's image score and patch map: with references, the average of zero-
    /// and few-shot maps, and `(global + max few-shot) / 2`.
    pub fn combined(&self) -> (f32, Grid) {
        match &self.few_shot {
            None => (self.global, self.zero_shot.clone()),
            Some(few) => {
                let values = self.zero_shot.values.iter().zip(&few.values).map(|(z, f)| (z + f) / 2.0).collect();
                (
                    (self.global + few.max()) / 2.0,
                    Grid::new(few.width, few.height, values),
                )
            }
        }
    }
}

pub struct Winclip {
    detector: Detector,
    settings: DetectSettings,
    text: Option<Tensor>,
    banks: Option<FewShotBanks>,
}

impl Winclip {
    /// Checks the window scales (`settings.scales`, 2 and 3 by default) against the grid.
    pub fn new(detector: Detector, settings: DetectSettings) -> Result<Self, DetectError> {
        settings.validate(detector.clip.model.vision.grid())?;
        Ok(Self { detector, settings, text: None, banks: None })
    }

    fn features(&self, image: &DynamicImage) -> Result<Features, DetectError> {
        let vision = &self.detector.clip.model.vision;
        let embedded = vision.embed(&self.detector.pixels(image)?)?;
        let (tokens, _, _) = vision.forward_embedded(&embedded, VisionCapture::default())?;
        let global = l2_normalize(&vision.project(&tokens.i((.., 0, ..))?.contiguous()?)?)?;
        let windows = self
            .settings
            .scales
            .iter()
            .map(|&s| self.window_features(&embedded, s))
            .collect::<Result<_, _>>()?;
        let patches = vision.ln_post(&patch_tokens(&tokens)?)?;
        Ok(Features { global, windows, patches })
    }

    /// Unit pooled features [K, E] of every `scale` x `scale` window (tokens mode).
    fn window_features(&self, embedded: &Tensor, scale: usize) -> Result<Tensor, DetectError> {
        let vision = &self.detector.clip.model.vision;
        let device = &self.detector.clip.device;
        let windows = window_indices(vision.grid(), scale);
        let bytes = batching::window_bytes(1 + scale * scale, vision.width(), vision.heads(), vision.dtype());
        let batch = batching::window_batch(device, self.settings.window_batch, bytes, windows.len());
        let pooled = batching::in_batches(&windows, batch, device, |chunk| {
            let index = Tensor::from_vec(chunk.concat(), (chunk.len(), scale * scale), device)?;
            vision.forward_windows(embedded, &index, false)?.0.i(0)
        })?;
        Ok(l2_normalize(&Tensor::cat(&pooled, 0)?)?)
    }

    /// The zero-shot and (with references) few-shot patch maps of one image.
    pub fn patch_scores(&self, image: &DynamicImage) -> Result<WinclipScores, DetectError> {
        let text = self.text.as_ref().ok_or(DetectError::NotPrepared)?;
        let scale = logit_scale(&self.detector);
        let grid = self.detector.clip.model.vision.grid();
        let features = self.features(image)?;
        let global = abnormal_probability(&features.global, text, scale)?[0];
        let mut zero_shot_scales = vec![Grid::new(grid, grid, vec![global; grid * grid])];
        for (window, &s) in features.windows.iter().zip(&self.settings.scales) {
            let scores = abnormal_probability(window, text, scale)?;
            zero_shot_scales.push(harmonic_patch_map(&scores, grid, s));
        }
        let few_shot = self.banks.as_ref().map(|banks| self.few_shot_map(banks, &features)).transpose()?;
        Ok(WinclipScores {
            global,
            zero_shot: harmonic_mean(&zero_shot_scales),
            few_shot,
        })
    }

    fn few_shot_map(&self, banks: &FewShotBanks, features: &Features) -> Result<Grid, DetectError> {
        let grid = self.detector.clip.model.vision.grid();
        let scores = |bank: &MemoryBank, queries: &Tensor| -> candle_core::Result<Vec<f32>> {
            Ok(bank.nearest(queries)?.iter().map(|n| few_shot_score(n.similarity)).collect())
        };
        let mut maps = vec![Grid::new(grid, grid, scores(&banks.patches, &features.patches)?)];
        for ((bank, window), &s) in banks.windows.iter().zip(&features.windows).zip(&self.settings.scales) {
            maps.push(harmonic_patch_map(&scores(bank, window)?, grid, s));
        }
        let values = (0..grid * grid)
            .map(|i| maps.iter().map(|m| m.values[i]).sum::<f32>() / maps.len() as f32)
            .collect();
        Ok(Grid::new(grid, grid, values))
    }
}

impl Method for Winclip {
    fn kind(&self) -> MethodKind {
        MethodKind::Winclip
    }

    fn prepare(&mut self, class: &ClassSpec, references: &[DynamicImage]) -> Result<(), DetectError> {
        let (normal, abnormal) = class_prompts(class);
        self.text = Some(label_features(&mut self.detector, &normal, &abnormal, LabelPooling::UnitMean)?);
        self.banks = None;
        if references.is_empty() {
            return Ok(());
        }
        let features = references.iter().map(|r| self.features(r)).collect::<Result<Vec<_>, _>>()?;
        let windows = (0..self.settings.scales.len())
            .map(|s| MemoryBank::new(&features.iter().map(|f| f.windows[s].clone()).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()?;
        let patches = MemoryBank::new(&features.iter().map(|f| f.patches.clone()).collect::<Vec<_>>())?;
        self.banks = Some(FewShotBanks { windows, patches });
        Ok(())
    }

    fn score(&mut self, image: &DynamicImage) -> Result<Scored, DetectError> {
        let (image_score, patch_map) = self.patch_scores(image)?.combined();
        Scored::from_patch_map(image_score, &patch_map, image, self.settings.sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_ensemble_is_templates_times_states() {
        let (normal, abnormal) = winclip_prompts("metal nut");
        assert_eq!((normal.len(), abnormal.len()), (22 * 7, 22 * 4));
        assert_eq!(normal[0], "a cropped photo of the metal nut.");
        assert_eq!(normal[1], "a cropped photo of the flawless metal nut.");
        assert_eq!(abnormal[3], "a cropped photo of the metal nut with damage.");
        assert_eq!(abnormal.last().unwrap(), "a photo of a metal nut with damage for anomaly detection.");
    }

    #[test]
    fn prompts_name_the_class_by_its_folder_id() {
        let prompts = crate::prompts::PromptStore { recipes: None }.resolve("metal_nut").unwrap().set.expand();
        let class = ClassSpec { id: "metal_nut".into(), name: "metal nut".into(), prompts };
        let (normal, abnormal) = class_prompts(&class);
        assert_eq!(normal[0], "a cropped photo of the metal_nut.");
        assert!(abnormal.iter().all(|p| p.contains("metal_nut")));
    }

    #[test]
    fn few_shot_terms_average_into_the_map_and_the_image_score() {
        let scores = WinclipScores {
            global: 0.4,
            zero_shot: Grid::new(2, 1, vec![0.2, 0.6]),
            few_shot: Some(Grid::new(2, 1, vec![0.1, 0.3])),
        };
        let (image, map) = scores.combined();
        assert!((image - 0.35).abs() < 1e-6);
        assert!((map.values[0] - 0.15).abs() < 1e-6 && (map.values[1] - 0.45).abs() < 1e-6);
        let zero_shot = WinclipScores { few_shot: None, ..scores };
        assert_eq!(zero_shot.combined(), (0.4, Grid::new(2, 1, vec![0.2, 0.6])));
    }
}
