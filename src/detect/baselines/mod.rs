//! The baselines of METHOD section 6, built from the same model API and map
//! helpers as ALFA: plain CLIP, WinCLIP (WinCLIP+ with references), AnoVL TFA and
//! AnoVL TTA. Each owns a `Detector` for its preprocessing and text-feature cache.

pub mod anovl;
pub mod clip;
pub mod winclip;

use candle_core::Tensor;
use image::DynamicImage;

use super::anomalydino::AnomalyDino;
use super::{DetectError, DetectSettings, Detector, Method, MethodKind};
use crate::clip::l2_normalize;

pub use anovl::{Anovl, ImageViews, TtaSettings};
pub use clip::ClipBaseline;
pub use winclip::{Winclip, WinclipScores};

/// What `build_method` leaves at its defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BaselineOptions {
    /// The views AnoVL's image score averages (AnoVL only).
    pub anovl_views: ImageViews,
}

impl BaselineOptions {
    /// The options for `kind` from the command line's `--anovl-views N`, refused before
    /// any work when the method has no such option or the count is not one it knows.
    pub fn for_method(kind: MethodKind, anovl_views: Option<usize>) -> Result<Self, DetectError> {
        let Some(count) = anovl_views else { return Ok(Self::default()) };
        if !matches!(kind, MethodKind::AnovlTfa | MethodKind::AnovlTta) {
            return Err(DetectError::Settings(format!("--anovl-views works with --method anovl-tfa or anovl-tta, not {}", kind.name())));
        }
        Ok(Self { anovl_views: ImageViews::from_count(count)? })
    }
}

/// A baseline of `kind` around `detector` (for anomalydino, one with DINOv2). ALFA
/// itself is not a baseline: the `AlfaMethod` builds it.
pub fn build_method(
    kind: MethodKind,
    detector: Detector,
    settings: DetectSettings,
) -> Result<Box<dyn Method>, DetectError> {
    build_method_with(kind, detector, settings, BaselineOptions::default())
}

/// `build_method` with `options`; an option the method does not have is an error.
pub fn build_method_with(
    kind: MethodKind,
    detector: Detector,
    settings: DetectSettings,
    options: BaselineOptions,
) -> Result<Box<dyn Method>, DetectError> {
    let anovl = matches!(kind, MethodKind::AnovlTfa | MethodKind::AnovlTta);
    if !anovl && options.anovl_views != ImageViews::default() {
        return Err(DetectError::Settings(format!(
            "AnoVL's image views apply to anovl-tfa and anovl-tta, not {kind:?}"
        )));
    }
    Ok(match kind {
        MethodKind::Alfa => return Err(DetectError::Settings("alfa is built by AlfaMethod".into())),
        MethodKind::Anomalydino => Box::new(AnomalyDino::new(detector, settings)?),
        MethodKind::Clip => Box::new(ClipBaseline::new(detector, settings)),
        MethodKind::Winclip => Box::new(Winclip::new(detector, settings)?),
        MethodKind::AnovlTfa => Box::new(Anovl::tfa(detector, settings).with_views(options.anovl_views)),
        MethodKind::AnovlTta => {
            Box::new(Anovl::tta(detector, settings, TtaSettings::default()).with_views(options.anovl_views))
        }
    })
}

/// CLIP's temperature, capped at 100 as in the ALFA engine (100 for released models).
fn logit_scale(detector: &Detector) -> f32 {
    detector.clip.model.logit_scale.min(100.0)
}

/// How a label's prompt features become its text feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelPooling {
    /// The normalised mean of the unit prompt features (CLIP, WinCLIP).
    UnitMean,
    /// The normalised mean of the raw prompt features, the text tower's output before
    /// normalisation (AnoVL's `prompt_ensemble.py`).
    RawMean,
}

/// `[f+, f-]` [2, E]: each label's prompt features averaged as `pooling` says, then
/// normalised.
fn label_features(
    detector: &mut Detector,
    normal: &[String],
    abnormal: &[String],
    pooling: LabelPooling,
) -> Result<Tensor, DetectError> {
    let mut mean = |texts: &[String]| -> Result<Tensor, DetectError> {
        let features = match pooling {
            LabelPooling::UnitMean => detector.text_features(texts)?,
            LabelPooling::RawMean => detector.raw_text_features(texts)?,
        };
        Ok(l2_normalize(&features.mean_keepdim(0)?)?)
    };
    let normal = mean(normal)?;
    let abnormal = mean(abnormal)?;
    Ok(Tensor::cat(&[&normal, &abnormal], 0)?)
}

/// CLIP and AnoVL have no few-shot mode: references would be silently unused.
fn zero_shot_only(kind: MethodKind, references: &[DynamicImage]) -> Result<(), DetectError> {
    if references.is_empty() {
        Ok(())
    } else {
        Err(DetectError::Settings(format!("{kind:?} is zero-shot only: it takes no reference images")))
    }
}

/// The patch tokens (class token dropped) of the first image of `tokens` [B, 1 + M, W]: [M, W].
fn patch_tokens(tokens: &Tensor) -> candle_core::Result<Tensor> {
    let first = tokens.get(0)?;
    first.narrow(0, 1, first.dim(0)? - 1)
}
