//! DINOv2 patch features (AnomalyDINO's backbone) from `candle_transformers`' model.
//!
//! The image is squashed to DINOv2's native 518 x 518 input (37 x 37 patches of 14 px,
//! so the position embeddings are used as trained, never interpolated) with Pillow's
//! bicubic filter, then normalised with the ImageNet mean and std. AnomalyDINO instead
//! resizes the shorter side to 448 (keeping the aspect ratio) and interpolates the
//! position embeddings; the crate's interpolation is nearest-neighbour where DINOv2's
//! is bicubic, so alfa stays at the native size. Squashing, as the CLIP detector does,
//! keeps the whole image (MVTec AD's images are square: there it is a plain resize).
//!
//! Two differences from DINOv2 are the crate's, measured against timm in
//! `tests/dinov2.rs` (see the README): its layer norms use eps 1e-5 (DINOv2: 1e-6) and
//! its MLP uses the tanh approximation of GELU (DINOv2: the exact one).
//!
//! On the CPU with alfa's native kernels (the default) the forward runs on those
//! kernels instead ([`native`]), several times faster; the crate's model is the path of
//! GPUs and of `ALFA_KERNELS=generic`.

mod native;
mod weights;

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::dinov2::DinoVisionTransformer;
use image::DynamicImage;

use crate::clip::preprocess::{Filter, Preprocessor, ResizeMode};
use crate::clip::{ClipError, Kernels, l2_normalize};
use crate::hub::HubFailure;
pub use weights::{DINO_REPO, DinoFiles, DinoRequest, DinoShape, DinoSize};

/// The input side the crate's model is built for (its position embeddings' grid x 14).
pub const IMAGE_SIZE: usize = 518;
pub const PATCH_SIZE: usize = 14;
/// Patches per side: 37.
pub const GRID: usize = IMAGE_SIZE / PATCH_SIZE;

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, thiserror::Error)]
pub enum Dinov2Error {
    #[error("DINOv2 model `{model}` not found: {reason}")]
    NotFound { model: String, reason: String },
    #[error("cannot load DINOv2 weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("DINOv2 weights {path} lack the tensor `{name}` (not a DINOv2 ViT, or a truncated file?)")]
    MissingTensor { path: PathBuf, name: String },
    #[error("DINOv2 weights {path}: tensor `{name}` has shape {found:?}, the model at 518 px needs {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    /// Boxed, as is `Device`: errors travel inside `DetectError` and `BatchError`, and
    /// a large error makes every `Result` on the way large.
    #[error("{}", download_message(.0))]
    Download(Box<HubFailure>),
    #[error("could not set up the Hugging Face client: {0}")]
    HubClient(String),
    /// The device chosen as for CLIP (`clip::device`) could not be set up, or ran out
    /// of memory (`ClipError::OutOfMemory`).
    #[error(transparent)]
    Device(Box<ClipError>),
    #[error(transparent)]
    Tensor(candle_core::Error),
}

impl From<candle_core::Error> for Dinov2Error {
    fn from(error: candle_core::Error) -> Self {
        match ClipError::from(error) {
            ClipError::Tensor(error) => Self::Tensor(error),
            out_of_memory => Self::Device(Box::new(out_of_memory)),
        }
    }
}

impl From<ClipError> for Dinov2Error {
    fn from(e: ClipError) -> Self {
        Self::Device(Box::new(e))
    }
}

/// Offline, what to download and where to put it comes first (as for CLIP's models).
fn download_message(f: &HubFailure) -> String {
    let todo = format!(
        "To work offline, download {}/resolve/main/{} and pass `--dino-model FILE` (or a folder holding it).",
        f.url, f.file
    );
    crate::hub::failure_message(&f.file, &f.url, &f.reason, f.offline, &todo)
}

/// Which forward a loaded model runs.
enum Forward {
    /// `candle_transformers`' model: GPUs and `ALFA_KERNELS=generic`.
    Crate(DinoVisionTransformer),
    /// alfa's CPU kernels.
    Native(native::NativeDinov2),
}

/// A loaded DINOv2 backbone.
pub struct Dinov2 {
    forward: Forward,
    pub shape: DinoShape,
    pub files: DinoFiles,
    pub device: Device,
    preprocessor: Preprocessor,
}

impl std::fmt::Debug for Dinov2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dinov2").field("shape", &self.shape).field("files", &self.files).finish_non_exhaustive()
    }
}

impl Dinov2 {
    /// The weights in `files` on `device`; with `kernels` native on the CPU, the
    /// forward runs on alfa's kernels.
    pub fn load(files: &DinoFiles, device: &Device, kernels: Kernels) -> Result<Self, Dinov2Error> {
        let backend = weights::WeightsBackend::open(&files.weights)?;
        let shape = backend.shape()?;
        let problem = backend.problem();
        // The crate's model checks every tensor first; the native forward reuses them.
        let tensors = backend.tensors().clone();
        let path = backend.path().to_owned();
        let vb = candle_nn::VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = DinoVisionTransformer::new(vb, shape.depth, shape.embed_dim, shape.num_heads)
            .map_err(|e| problem.lock().ok().and_then(|mut p| p.take()).unwrap_or_else(|| Dinov2Error::from(e)))?;
        // Only one of the two is kept: the native forward packs its own weights.
        let forward = match kernels.on(device) {
            Kernels::Native => Forward::Native(native::NativeDinov2::new(&path, &tensors, shape)?),
            Kernels::Generic => Forward::Crate(model),
        };
        Ok(Self {
            forward,
            shape,
            files: files.clone(),
            device: device.clone(),
            preprocessor: Preprocessor {
                size: IMAGE_SIZE as u32,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                filter: Filter::Bicubic,
                resize_mode: ResizeMode::Squash,
                fill: 0,
            },
        })
    }

    /// Whether the forward runs on alfa's CPU kernels (else candle-transformers' model).
    pub fn runs_native(&self) -> bool {
        matches!(self.forward, Forward::Native(_))
    }

    /// A key that changes whenever the weights change.
    pub fn identity(&self) -> String {
        self.files.identity()
    }

    /// The image squashed to 518 x 518 and normalised, [1, 3, 518, 518].
    pub fn pixels(&self, image: &DynamicImage) -> Result<Tensor, Dinov2Error> {
        Ok(self.preprocessor.tensor(image, &self.device)?.unsqueeze(0)?)
    }

    /// Unit patch features [37 * 37, D], row-major over the grid: the last block's
    /// tokens after the final norm, class token dropped (AnomalyDINO's features).
    pub fn patch_features(&self, image: &DynamicImage) -> Result<Tensor, Dinov2Error> {
        self.features_of_pixels(&self.pixels(image)?)
    }

    /// [`Self::patch_features`] of preprocessed pixels [1, 3, 518, 518]. One image per
    /// call: the crate's model concatenates its [1, 1, D] class token to the batch, so a
    /// batch of more than one image is refused by the model itself.
    pub fn features_of_pixels(&self, pixels: &Tensor) -> Result<Tensor, Dinov2Error> {
        let model = match &self.forward {
            Forward::Native(native) => return Ok(l2_normalize(&native.patch_tokens(pixels)?)?),
            Forward::Crate(model) => model,
        };
        let last = self.shape.depth - 1;
        let tokens = model.get_intermediate_layers(pixels, &[last], false, false, true)?; // [1, 1, N, D]
        Ok(l2_normalize(&tokens.i((0, 0))?)?)
    }
}
