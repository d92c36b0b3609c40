//! The baselines of METHOD section 6, built from the same model API and map
//! helpers as ALFA: plain CLIP, WinCLIP (WinCLIP+ with references), AnoVL TFA and
//! AnoVL TTA. Each owns a `Detector` for its preprocessing and text-feature cache.

pub mod anovl;
pub mod clip;
pub mod winclip;

use candle_core::Tensor;
use image::DynamicImage;

use super::maps::{Grid, gaussian_blur, resize_bilinear};
use super::{DetectError, DetectSettings, Detector, Method, MethodKind};
use crate::clip::l2_normalize;

pub use anovl::{Anovl, TtaSettings};
pub use clip::ClipBaseline;
pub use winclip::{Winclip, WinclipScores};

/// A baseline of `kind` around `detector`. ALFA itself is not a baseline: the
/// `AlfaMethod` builds it.
pub fn build_method(
    kind: MethodKind,
    detector: Detector,
    settings: DetectSettings,
) -> Result<Box<dyn Method>, DetectError> {
    Ok(match kind {
        MethodKind::Alfa => return Err(DetectError::Settings("alfa is built by AlfaMethod".into())),
        MethodKind::Clip => Box::new(ClipBaseline::new(detector, settings)),
        MethodKind::Winclip => Box::new(Winclip::new(detector, settings)?),
        MethodKind::AnovlTfa => Box::new(Anovl::tfa(detector, settings)),
        MethodKind::AnovlTta => Box::new(Anovl::tta(detector, settings, TtaSettings::default())),
    })
}

/// CLIP's temperature, capped at 100 as in the ALFA engine (100 for released models).
fn logit_scale(detector: &Detector) -> f32 {
    detector.clip.model.logit_scale.min(100.0)
}

/// `[f+, f-]` [2, E]: each label's prompt features averaged, then normalised.
fn label_features(detector: &mut Detector, normal: &[String], abnormal: &[String]) -> Result<Tensor, DetectError> {
    let mean = |features: Tensor| l2_normalize(&features.mean_keepdim(0)?);
    let normal = mean(detector.text_features(normal)?)?;
    let abnormal = mean(detector.text_features(abnormal)?)?;
    Ok(Tensor::cat(&[&normal, &abnormal], 0)?)
}

/// A patch map taken to the image's resolution: bilinear upsampling, then the
/// Gaussian smoothing every method shares (ALFA's, `settings.sigma`).
fn image_map(patch_map: &Grid, image: &DynamicImage, sigma: f32) -> Grid {
    gaussian_blur(&resize_bilinear(patch_map, image.width() as usize, image.height() as usize), sigma)
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
