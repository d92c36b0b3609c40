//! The methods the evaluation compares, behind one interface: ALFA and the
//! baselines of METHOD section 6, zero-shot or with normal reference images.

use image::DynamicImage;

use std::path::PathBuf;

use super::{DetectError, ensure_finite};
use super::bank::ReferenceBank;
use super::engine::{ClassPrompts, Detector};
use super::maps::{Grid, image_map};
use super::settings::DetectSettings;
use crate::prompts::{ExpandedPrompts, PromptSource};

/// Which method to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// ALFA: prompt adaptation + fine-grained aligner (+ memory bank with references).
    Alfa,
    /// Plain CLIP: two prompts, last-layer patch tokens for the map.
    Clip,
    /// WinCLIP: prompt ensemble and window features (WinCLIP+ with references).
    Winclip,
    /// AnoVL, training-free adaptation (V-V attention path).
    AnovlTfa,
    /// AnoVL with test-time adaptation (5 AdamW steps per image).
    AnovlTta,
    /// AnomalyDINO: DINOv2 patches against the references' (few-shot only, no text).
    Anomalydino,
}

impl MethodKind {
    /// The method as `--method` spells it (`anovl-tfa`).
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}

/// The rows of ALFA's component analysis (paper Table 2), each adding one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Ablation {
    /// Template prompts only; every prompt kept; windows scored against the global text features.
    Templates,
    /// + the LLM-written prompts.
    Llm,
    /// + contextual scoring of the prompts per image.
    Context,
    /// + the fine-grained aligner: ALFA as published.
    #[default]
    Full,
}

impl Ablation {
    /// The settings and prompts of this row.
    pub fn apply(self, settings: &mut DetectSettings, prompts: &mut ExpandedPrompts) {
        if self == Ablation::Templates {
            prompts.normal.retain(|p| p.source == PromptSource::Template);
            prompts.abnormal.retain(|p| p.source == PromptSource::Template);
        }
        if matches!(self, Ablation::Templates | Ablation::Llm) {
            // S_c is never negative, so every prompt passes.
            settings.context_tau = -1.0;
        }
        settings.aligner = self == Ablation::Full;
    }
}

/// The class being inspected.
#[derive(Debug, Clone)]
pub struct ClassSpec {
    /// The dataset's spelling (`metal_nut`).
    pub id: String,
    /// The readable name put in prompts (`metal nut`).
    pub name: String,
    /// The class's prompt set, expanded (ALFA uses it; baselines use their own prompts).
    pub prompts: ExpandedPrompts,
}

/// What every method gives for one image.
#[derive(Debug, Clone)]
pub struct Scored {
    pub image_score: f32,
    /// The anomaly map at the image's resolution.
    pub map: Grid,
}

impl Scored {
    /// The image's result from its patch map: upsampled to `image`'s size and smoothed
    /// with `sigma` (`maps::image_map`); an error when the score or the map is not
    /// finite ([`super::ensure_finite`]).
    pub fn from_patch_map(image_score: f32, patch_map: &Grid, image: &DynamicImage, sigma: f32) -> Result<Self, DetectError> {
        ensure_finite(image_score, patch_map)?;
        Ok(Self { image_score, map: image_map(patch_map, image, sigma) })
    }
}

/// `Send`: the app runs methods on its engine thread.
pub trait Method: Send {
    fn kind(&self) -> MethodKind;
    /// Prepares a class: text features, and a memory bank when `references` (normal
    /// images) are given; none means zero-shot.
    fn prepare(&mut self, class: &ClassSpec, references: &[DynamicImage]) -> Result<(), DetectError>;
    /// Scores one image of the prepared class.
    fn score(&mut self, image: &DynamicImage) -> Result<Scored, DetectError>;
    /// Draws its randomness (AnoVL's test-time noise) from `seed` from now on; methods
    /// without any ignore it.
    fn reseed(&mut self, _seed: u64) {}
}

/// ALFA behind the evaluation's interface.
pub struct AlfaMethod {
    pub detector: Detector,
    pub settings: DetectSettings,
    pub ablation: Ablation,
    class: Option<ClassPrompts>,
    references: Option<ReferenceBank>,
}

impl AlfaMethod {
    pub fn new(detector: Detector, settings: DetectSettings, ablation: Ablation) -> Self {
        Self {
            detector,
            settings,
            ablation,
            class: None,
            references: None,
        }
    }
}

impl Method for AlfaMethod {
    fn kind(&self) -> MethodKind {
        MethodKind::Alfa
    }

    fn prepare(&mut self, class: &ClassSpec, references: &[DynamicImage]) -> Result<(), DetectError> {
        let mut prompts = class.prompts.clone();
        self.ablation.apply(&mut self.settings, &mut prompts);
        self.class = Some(self.detector.encode_class(prompts)?);
        let named: Vec<(PathBuf, DynamicImage)> = references
            .iter()
            .enumerate()
            .map(|(i, image)| (PathBuf::from(format!("reference {i}")), image.clone()))
            .collect();
        self.references = self.detector.reference_bank(&named, &self.settings, |_, _| ())?.bank;
        Ok(())
    }

    fn score(&mut self, image: &DynamicImage) -> Result<Scored, DetectError> {
        let class = self.class.as_ref().ok_or(DetectError::NotPrepared)?;
        let d = self.detector.detect_with_references(image, class, self.references.as_ref(), &self.settings)?;
        Ok(Scored {
            image_score: d.image_score,
            map: d.map,
        })
    }
}
