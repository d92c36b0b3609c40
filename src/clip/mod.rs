//! OpenCLIP in candle: config, weights, tokenizer, preprocessing and the two towers.

pub mod config;
pub mod kernels;
pub mod model;
pub(crate) mod packed;
pub mod preprocess;
pub mod source;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::DynamicImage;

pub use config::OpenClipConfig;
pub use model::{ClipModel, RandomWeights, TensorSource, VisionCapture, VisionOutput};
pub use preprocess::Preprocessor;
pub use source::{DEFAULT_MODEL, DownloadObserver, ModelFiles, ModelRequest};
pub use tokenizer::{ClipTokenizer, TokenizerSource};
pub use weights::Weights;

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid model config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot load weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("weights {path} lack the tensor `{name}` the config calls for (wrong architecture, or a truncated file?)")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "weights {path} do not match the config: tensor `{name}` has shape {found:?}, the config implies {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("cannot load {tokenizer}: {reason}")]
    Tokenizer { tokenizer: TokenizerSource, reason: String },
    #[error("cannot tokenize {text:?}: {reason}")]
    Tokenize { text: String, reason: String },
    #[error("empty text: a prompt needs at least one word")]
    EmptyText,
    #[error("cannot read image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("model `{model}` not found: {reason}")]
    ModelNotFound { model: String, reason: String },
    /// Offline, what to do comes first (see [`source::download_message`]).
    #[error("{}", crate::clip::source::download_message(repo, file, url, reason, *offline))]
    Download {
        repo: String,
        file: String,
        /// The repo's page on the hub (`https://huggingface.co/<repo>`, or under `HF_ENDPOINT`).
        url: String,
        reason: String,
        /// The hub could not be reached, or `HF_HUB_OFFLINE` forbade it.
        offline: bool,
    },
    #[error("could not set up the Hugging Face client: {0}")]
    HubClient(String),
    #[error(
        "bf16 precision runs on CPUs with AVX512-BF16 (Intel Cooper Lake, Sapphire Rapids and later; \
         AMD Zen 4 and later), and {found}: use --precision f32"
    )]
    Bf16Unsupported { found: &'static str },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// The number format of the image tower's transformer layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout, the same computation as OpenCLIP in PyTorch.
    #[default]
    F32,
    /// Linear layers in bfloat16 with f32 sums, as PyTorch's bf16 autocast does them:
    /// twice the matmul rate on CPUs with AVX512-BF16 (the detector: about 1.5x);
    /// maps and scores move slightly (README, Precision).
    Bf16,
}

impl Precision {
    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }

    /// Whether a tower on `device` can run in this precision.
    pub fn check(self, device: &Device) -> Result<(), ClipError> {
        match self {
            Self::F32 => Ok(()),
            Self::Bf16 if !device.is_cpu() => Err(ClipError::Bf16Unsupported { found: "the model is on a GPU" }),
            Self::Bf16 if !packed::supports(self) => Err(ClipError::Bf16Unsupported { found: "this CPU has none" }),
            Self::Bf16 => Ok(()),
        }
    }
}

/// Chooses the compute device: CUDA or Metal when built in and present, else CPU.
pub fn device(prefer_cpu: bool) -> Result<Device, ClipError> {
    if prefer_cpu {
        return Ok(Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    {
        return Ok(Device::cuda_if_available(0)?);
    }
    #[cfg(feature = "metal")]
    {
        return Ok(Device::metal_if_available(0)?);
    }
    #[allow(unreachable_code)]
    Ok(Device::Cpu)
}

/// Images larger than this are refused before decoding: the decoded image, its
/// float map at full resolution and the overlay would need gigabytes.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// Reads an image file, naming the file in the error.
pub fn open_image(path: &Path) -> Result<DynamicImage, ClipError> {
    decode_checked(|| image::ImageReader::open(path).and_then(|r| r.with_guessed_format())).map_err(|reason| {
        ClipError::Image {
            path: path.to_owned(),
            reason,
        }
    })
}

/// [`open_image`] for an image held in memory (the format is guessed from its bytes):
/// the same size check and decoder limits; the error is the reason alone.
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, String> {
    decode_checked(|| image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format())
}

/// Reads the dimensions first and decodes only images within [`MAX_IMAGE_PIXELS`];
/// `reader` opens the image afresh for each of the two steps.
fn decode_checked<R: std::io::BufRead + std::io::Seek>(
    reader: impl Fn() -> std::io::Result<image::ImageReader<R>>,
) -> Result<DynamicImage, String> {
    let (width, height) = reader().map_err(|e| e.to_string())?.into_dimensions().map_err(|e| e.to_string())?;
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(format!(
            "{width} x {height} pixels is over the limit of {} megapixels: downscale or tile it first",
            MAX_IMAGE_PIXELS / 1_000_000
        ));
    }
    reader().map_err(|e| e.to_string())?.decode().map_err(|e| e.to_string())
}

/// A loaded CLIP: model, tokenizer and preprocessing, on one device.
pub struct Clip {
    pub model: ClipModel,
    pub tokenizer: ClipTokenizer,
    pub preprocessor: Preprocessor,
    pub config: OpenClipConfig,
    pub device: Device,
}

impl Clip {
    /// `precision` is the image tower's; the text tower is always f32.
    pub fn load(files: &ModelFiles, device: &Device, precision: Precision) -> Result<Self, ClipError> {
        let weights = Weights::load(&files.weights, device)?;
        Self::from_source(&files.config, &weights, &files.tokenizer, device, precision)
    }

    /// Builds from any tensor source (random weights for benchmarks).
    pub fn from_source(
        config: &OpenClipConfig,
        source: &dyn TensorSource,
        tokenizer: &TokenizerSource,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, ClipError> {
        let model = ClipModel::new(source, &config.model_cfg, precision)?;
        let tokenizer = ClipTokenizer::load(tokenizer, config.model_cfg.text_cfg.context_length)?;
        let preprocessor =
            Preprocessor::new(&config.preprocess_cfg, config.model_cfg.vision_cfg.image_size());
        Ok(Self {
            model,
            tokenizer,
            preprocessor,
            config: config.clone(),
            device: device.clone(),
        })
    }

    /// L2-normalised image embeddings [B, E].
    pub fn encode_images(&self, images: &[DynamicImage]) -> Result<Tensor, ClipError> {
        let pixels = self.preprocessor.batch(images, &self.device)?;
        Ok(l2_normalize(&self.model.vision.forward(&pixels)?)?)
    }

    /// L2-normalised text embeddings [T, E]; the batch is cut to its longest prompt.
    pub fn encode_texts(&self, texts: &[&str]) -> Result<Tensor, ClipError> {
        Ok(l2_normalize(&self.encode_texts_raw(texts)?)?)
    }

    /// The text tower's embeddings before normalisation [T, E] (OpenCLIP's
    /// `encode_text(normalize=False)`); the batch is cut to its longest prompt.
    pub fn encode_texts_raw(&self, texts: &[&str]) -> Result<Tensor, ClipError> {
        let ids = self.tokenizer.batch(texts, &self.device)?;
        Ok(self.model.text.forward(&ids)?)
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(candle_core::D::Minus1)?.sqrt()?)
}
