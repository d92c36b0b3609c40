//! Anomaly detection on top of CLIP: the ALFA engine and its building blocks
//! (contextual scoring, global-to-local projection, dense maps, text-feature cache).

pub mod anomalydino;
pub mod bank;
pub mod baselines;
pub mod batching;
pub mod colormap;
pub mod context;
pub mod engine;
pub mod export;
pub mod inputs;
pub mod maps;
pub mod memory;
pub mod method;
pub mod references;
pub mod ridge;
pub mod settings;
pub mod text_cache;
pub mod threshold;

pub use engine::{ClassPrompts, Detection, Detector, Partial};
pub use settings::{DetectSettings, RefsBackbone, WindowMode};
pub use method::{Ablation, AlfaMethod, ClassSpec, Method, MethodKind, Scored};

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Clip(#[from] crate::clip::ClipError),
    #[error(transparent)]
    Dinov2(#[from] crate::dinov2::Dinov2Error),
    #[error(transparent)]
    Prompts(#[from] crate::prompts::PromptError),
    #[error("the prompt set of `{0}` has a label without prompts")]
    EmptyLabel(String),
    #[error("the method has no class prepared: call `prepare` first")]
    NotPrepared,
    #[error("{0}")]
    References(String),
    #[error("cancelled")]
    Cancelled,
    #[error("invalid settings: {0}")]
    Settings(String),
    /// Thresholds from good images could not be set.
    #[error("{0}")]
    Threshold(String),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// A window batch ran out of device memory, and so did its halves down to a
    /// single window (`batching::in_batches`).
    #[error(
        "the {device} ran out of memory on a window batch of {batch}, and again after halving it down to a single \
         window ({reason}). {}", crate::clip::OUT_OF_MEMORY_ADVICE
    )]
    OutOfMemory { device: String, batch: usize, reason: String },
    /// A score or a map came out NaN or infinite ([`ensure_finite`]).
    #[error(
        "the result for this image is not a number (NaN or infinite): the model's weights may hold NaN or values \
         beyond f32's range (are they intact? a re-download or another copy of the model fixes a damaged file)"
    )]
    NotFinite,
    /// The aligner's ridge system could not be solved (`ridge::project_text`).
    #[error(
        "the fine-grained aligner could not solve its ridge system for a {scale}x{scale} window: the model's \
         features are far too large or not finite (are its weights intact?). A larger ridge lambda in the \
         class's recipe, or the aligner off, avoids it"
    )]
    Aligner { scale: usize },
    #[error(transparent)]
    Tensor(candle_core::Error),
}

/// Out of device memory anywhere else is `ClipError::OutOfMemory`, with what to do.
impl From<candle_core::Error> for DetectError {
    fn from(error: candle_core::Error) -> Self {
        match crate::clip::ClipError::from(error) {
            crate::clip::ClipError::Tensor(error) => Self::Tensor(error),
            out_of_memory => Self::Clip(out_of_memory),
        }
    }
}

/// `Err(NotFinite)` when `image_score` or a value of `patch_map` is NaN or infinite:
/// weights gone wrong give such numbers silently, and a NaN score would pass as a
/// result (it is neither above nor below any threshold).
pub(crate) fn ensure_finite(image_score: f32, patch_map: &maps::Grid) -> Result<(), DetectError> {
    if image_score.is_finite() && patch_map.values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(DetectError::NotFinite)
    }
}
