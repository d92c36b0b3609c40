//! OpenCLIP in candle: config, weights, tokenizer, preprocessing and the two towers.

pub mod config;
pub mod cpu;
pub mod kernels;
pub mod model;
pub(crate) mod packed;
pub mod preprocess;
pub mod source;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::DynamicImage;

pub use config::OpenClipConfig;
pub use cpu::CpuFamily;
pub use kernels::Kernels;
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
        "bf16 precision runs on GPUs, on CPUs with AVX512-BF16 (Intel Cooper Lake, Sapphire Rapids and later; \
         AMD Zen 4 and later) and on the generic kernels (ALFA_KERNELS=generic), and {found}: use --precision f32"
    )]
    Bf16Unsupported { found: &'static str },
    /// f16 asked for on the CPU's native kernels.
    #[error(
        "f16 precision is for GPUs (a build with --features cuda or metal): this CPU's kernels have no f16. \
         Use --precision f32{}{}",
        if *bf16_here { ", or --precision bf16 (this CPU has AVX512-BF16)" } else { "" },
        " (ALFA_KERNELS=generic runs f16 on the CPU through candle's own operations, slowly: the GPU's path, for testing)"
    )]
    F16OnCpu { bf16_here: bool },
    #[error("{}=`{value}` is not a kernel choice: use `native` (this crate's CPU kernels, the default) or `generic` (candle's own operations, what CUDA and Metal run)", kernels::Kernels::ENV)]
    Kernels { value: String },
    #[error("{}=`{value}` cannot be used here: the kernel families are `avx512` (AVX-512F), `avx2` (AVX2 and FMA) and `portable` (neither), and this CPU has {available}", cpu::CpuFamily::ENV)]
    CpuFamily { value: String, available: String },
    /// Built with a GPU backend, asked for it, and it cannot be used.
    #[error("{}", no_gpu_message(backend, reason))]
    NoGpu { backend: &'static str, reason: String },
    /// A device this build has no backend for.
    #[error("{device} was asked for, but this build of alfa has no {device} support: build it with `cargo build --release --features {feature}` (see the README), or run on the CPU")]
    NotBuiltFor { device: &'static str, feature: &'static str },
    /// The GPU ran out of memory outside the window batches, which split and retry
    /// (`detect::batching`): loading the model, the global pass, the text tower.
    #[error("the GPU ran out of memory ({reason}). {OUT_OF_MEMORY_ADVICE}")]
    OutOfMemory { reason: String },
    #[error(transparent)]
    Tensor(candle_core::Error),
}

/// What to do when a GPU runs out of memory: said by every such error.
pub const OUT_OF_MEMORY_ADVICE: &str = "Free memory on it: --precision f16 or bf16 (the image tower in half the memory, \
    on a GPU), close other programs that use the GPU, or run on the CPU with --cpu";

impl From<candle_core::Error> for ClipError {
    fn from(error: candle_core::Error) -> Self {
        match out_of_memory_reason(&error) {
            Some(reason) => Self::OutOfMemory { reason },
            None => Self::Tensor(error),
        }
    }
}

/// The first line of `error` where it says that the device ran out of memory
/// ([`is_out_of_memory`]); with RUST_BACKTRACE set, candle appends a backtrace.
pub fn out_of_memory_reason(error: &candle_core::Error) -> Option<String> {
    let message = error.to_string();
    is_out_of_memory(&message).then(|| message.lines().next().unwrap_or_default().trim().to_owned())
}

fn no_gpu_message(backend: &str, reason: &str) -> String {
    let check = if backend == "CUDA" { " (check the driver with `nvidia-smi`)" } else { "" };
    format!("this build of alfa runs on {backend}, but no {backend} device can be used: {reason}{check}. `--cpu` runs on the CPU instead")
}

/// The number format of the image tower's transformer layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout, the same computation as OpenCLIP in PyTorch.
    #[default]
    F32,
    /// bfloat16. On the CPU's native kernels: linear layers in bfloat16 with f32 sums,
    /// as PyTorch's bf16 autocast does them (twice the matmul rate on CPUs with
    /// AVX512-BF16; the detector: about 1.5x). On GPUs (and `ALFA_KERNELS=generic`):
    /// the whole transformer in candle's bf16. Maps and scores move slightly (README,
    /// Precision).
    Bf16,
    /// IEEE half precision, for GPUs: the image tower's transformer in candle's f16
    /// (`ALFA_KERNELS=generic` runs it on the CPU, to test that path).
    F16,
}

impl Precision {
    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// The candle type the image tower's transformer computes in on `kernels`: the
    /// generic kernels (every GPU) hold weights and activations in this precision;
    /// the native CPU kernels keep f32 activations (bf16 exists there only inside the
    /// packed matmul).
    pub fn dtype(self, kernels: Kernels) -> DType {
        match (self, kernels) {
            (Self::F32, _) | (_, Kernels::Native) => DType::F32,
            (Self::Bf16, Kernels::Generic) => DType::BF16,
            (Self::F16, Kernels::Generic) => DType::F16,
        }
    }

    /// Whether an image tower on `device` can run in this precision with `kernels`
    /// (GPUs always run the generic ones, see [`Kernels::on`]).
    pub fn check(self, device: &Device, kernels: Kernels) -> Result<(), ClipError> {
        self.check_on(DeviceKind::of(device), kernels)
    }

    /// [`Self::check`] before a device is opened: on the kind of device a load will use.
    /// f32 runs everywhere; bf16 on GPUs, on the generic kernels and on CPUs whose
    /// native kernels have AVX512-BF16; f16 on GPUs and on the generic kernels.
    pub fn check_on(self, device: DeviceKind, kernels: Kernels) -> Result<(), ClipError> {
        let generic = device != DeviceKind::Cpu || kernels == Kernels::Generic;
        match self {
            Self::F32 => Ok(()),
            _ if generic => Ok(()),
            Self::Bf16 if packed::supports(self) => Ok(()),
            Self::Bf16 => Err(ClipError::Bf16Unsupported {
                found: if CpuFamily::active() == CpuFamily::widest() {
                    "this CPU has none"
                } else {
                    "ALFA_CPU chooses a kernel family without it"
                },
            }),
            Self::F16 => Err(ClipError::F16OnCpu { bf16_here: packed::supports(Self::Bf16) }),
        }
    }
}

/// A device to run the model on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    /// The first CUDA GPU (builds with `--features cuda`).
    Cuda,
    /// The Apple GPU (builds with `--features metal`).
    Metal,
}

impl DeviceKind {
    /// The kind of an open device.
    pub fn of(device: &Device) -> Self {
        match device {
            Device::Cpu => Self::Cpu,
            Device::Cuda(_) => Self::Cuda,
            Device::Metal(_) => Self::Metal,
        }
    }

    /// The device a load will open: the GPU this build has a backend for unless
    /// `prefer_cpu` (as [`device`] chooses).
    pub fn chosen(prefer_cpu: bool) -> Self {
        match Self::built_gpu() {
            Some(gpu) if !prefer_cpu => gpu,
            _ => Self::Cpu,
        }
    }

    /// The GPU this build has a backend for, if any.
    pub fn built_gpu() -> Option<Self> {
        if cfg!(feature = "cuda") {
            Some(Self::Cuda)
        } else if cfg!(feature = "metal") {
            Some(Self::Metal)
        } else {
            None
        }
    }

    /// Opens the device. A GPU that cannot be used is an error that says why and
    /// that `--cpu` runs on the CPU: never a silent fallback to the CPU.
    pub fn open(self) -> Result<Device, ClipError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda => open_gpu("CUDA", "cuda", cfg!(feature = "cuda"), || Device::new_cuda(0)),
            Self::Metal => open_gpu("Metal", "metal", cfg!(feature = "metal"), || Device::new_metal(0)),
        }
    }
}

/// `open` of a GPU backend built in or not. A backend whose libraries fail to load
/// may panic instead of returning an error: that is caught and reported the same way.
fn open_gpu(
    backend: &'static str,
    feature: &'static str,
    built: bool,
    open: impl FnOnce() -> candle_core::Result<Device> + std::panic::UnwindSafe,
) -> Result<Device, ClipError> {
    if !built {
        return Err(ClipError::NotBuiltFor { device: backend, feature });
    }
    let reason = match std::panic::catch_unwind(open) {
        Ok(Ok(device)) => return Ok(device),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "its library failed to load".into()),
    };
    // With RUST_BACKTRACE set, candle appends a backtrace: the first line says it.
    let reason = reason.lines().next().unwrap_or_default().trim().to_owned();
    let reason = if reason.contains("CUDA_ERROR_NO_DEVICE") {
        format!("no CUDA GPU was found ({reason})")
    } else if reason.contains("CUDA_ERROR_INSUFFICIENT_DRIVER") || reason.contains("CUDA_ERROR_COMPAT_NOT_SUPPORTED") {
        format!("the NVIDIA driver is missing or too old for this build's CUDA ({reason})")
    } else {
        reason
    };
    Err(ClipError::NoGpu { backend, reason })
}

/// Chooses the compute device: the GPU this build has a backend for (CUDA or Metal;
/// an error when it cannot be used), or the CPU when asked, or when built without one.
pub fn device(prefer_cpu: bool) -> Result<Device, ClipError> {
    DeviceKind::chosen(prefer_cpu).open()
}

/// The device for messages: `CPU`, `CUDA GPU 0`, `Metal GPU 0`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "CPU".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("CUDA GPU {gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("Metal GPU {gpu_id}"),
    }
}

/// The bytes a GPU can still allocate, where the backend says; `None` on the CPU
/// (window batches there are the setting's) and where it is unknown.
pub fn free_memory(device: &Device) -> Option<u64> {
    // Without the backend built in, its `Device` variant still exists (candle's dummy
    // device) and ends in the last arm; with both built in, that arm is unreachable.
    #[allow(unreachable_patterns)]
    match device {
        Device::Cpu => None,
        // The driver's count for the whole GPU (other processes' allocations are
        // taken off); `mem_get_info` binds candle's context to this thread first.
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => cuda.cuda_stream().context().mem_get_info().ok().map(|(free, _total)| free as u64),
        // Metal has no free-memory query: what the system recommends this process keep
        // resident less what it has allocated (candle's buffer pool included, so this
        // errs low: smaller batches, never an overcommitted one).
        #[cfg(feature = "metal")]
        Device::Metal(metal) => {
            let gpu = metal.metal_device();
            Some(gpu.recommended_max_working_set_size().saturating_sub(gpu.current_allocated_size()) as u64)
        }
        _ => None,
    }
}

/// Whether `message` (a candle error's text) says the device ran out of memory:
/// CUDA's allocator (`CUDA_ERROR_OUT_OF_MEMORY`, "out of memory"), cuBLAS's workspace
/// (`CUBLAS_STATUS_ALLOC_FAILED`), Metal's buffer allocation (candle's "Failed to
/// create metal resource: Buffer", a nil `newBuffer`) and a Metal command buffer that
/// ran out (`kIOGPUCommandBufferCallbackErrorOutOfMemory`, "Insufficient Memory").
pub fn is_out_of_memory(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "cuda_error_out_of_memory",
        "out of memory",
        "cublas_status_alloc_failed",
        "failed to create metal resource: buffer",
        "kiogpucommandbuffercallbackerroroutofmemory",
        "insufficient memory",
    ]
    .iter()
    .any(|sign| message.contains(sign))
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
    /// `precision` is the image tower's; the text tower is always f32. `kernels`
    /// chooses the CPU's implementation (other devices always run the generic one);
    /// the CLI and the app take it from `ALFA_KERNELS` ([`Kernels::from_env`]).
    pub fn load(files: &ModelFiles, device: &Device, precision: Precision, kernels: Kernels) -> Result<Self, ClipError> {
        let weights = Weights::load(&files.weights, device)?;
        Self::from_source(&files.config, &weights, &files.tokenizer, device, precision, kernels)
    }

    /// Builds from any tensor source (random weights for benchmarks).
    pub fn from_source(
        config: &OpenClipConfig,
        source: &dyn TensorSource,
        tokenizer: &TokenizerSource,
        device: &Device,
        precision: Precision,
        kernels: Kernels,
    ) -> Result<Self, ClipError> {
        let model = ClipModel::new(source, &config.model_cfg, precision, kernels)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_gpu_is_an_error_that_names_the_cause_and_the_way_out() {
        let fail = |reason: &'static str| move || -> candle_core::Result<Device> { Err(candle_core::Error::Msg(reason.into())) };
        let no_device = open_gpu("CUDA", "cuda", true, fail("DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device is detected\")\n   0: backtrace"))
            .unwrap_err()
            .to_string();
        assert!(no_device.contains("no CUDA GPU was found") && no_device.contains("--cpu"), "{no_device}");
        assert!(!no_device.contains("backtrace"), "the backtrace is cut: {no_device}");
        let old = open_gpu("CUDA", "cuda", true, fail("DriverError(CUDA_ERROR_INSUFFICIENT_DRIVER, \"...\")")).unwrap_err().to_string();
        assert!(old.contains("driver is missing or too old") && old.contains("nvidia-smi"), "{old}");
        // A backend whose library cannot be loaded panics inside candle: caught, reported.
        let panicked = open_gpu("CUDA", "cuda", true, || -> candle_core::Result<Device> { panic!("Unable to dynamically load the \"cuda\" shared library") })
            .unwrap_err()
            .to_string();
        assert!(panicked.contains("Unable to dynamically load") && panicked.contains("--cpu"), "{panicked}");
        let not_built = open_gpu("Metal", "metal", false, || Ok(Device::Cpu)).unwrap_err().to_string();
        assert!(not_built.contains("--features metal"), "{not_built}");
        assert!(matches!(open_gpu("CUDA", "cuda", true, || Ok(Device::Cpu)), Ok(Device::Cpu)));
    }

    #[test]
    fn out_of_memory_is_recognised_in_each_backend_s_words() {
        for oom in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n   0: candle_core::error::Error::bt",
            "CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "Metal error Failed to create metal resource: Buffer",
            "Metal error Command buffer had following error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
        ] {
            assert!(is_out_of_memory(oom), "{oom}");
        }
        for other in [
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")",
            "CublasError(CUBLAS_STATUS_NOT_SUPPORTED)",
            "Metal error Failed to create metal resource: CommandQueue",
            "shape mismatch in matmul, lhs: [2, 3], rhs: [4, 5]",
        ] {
            assert!(!is_out_of_memory(other), "{other}");
        }
    }

    #[test]
    fn out_of_memory_anywhere_says_so_and_what_to_do() {
        let oom = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")\n   0: candle_core::error::Error::bt";
        let err = ClipError::from(candle_core::Error::Msg(oom.into()));
        let ClipError::OutOfMemory { reason } = &err else { panic!("{err:?}") };
        assert_eq!(reason, "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")", "the first line, no backtrace");
        let text = err.to_string();
        assert!(text.starts_with("the GPU ran out of memory") && text.contains("--precision f16") && text.contains("--cpu"), "{text}");
        // Through the detector's and DINOv2's errors alike; anything else stays candle's.
        let detect = crate::detect::DetectError::from(candle_core::Error::Msg(oom.into()));
        assert!(matches!(detect, crate::detect::DetectError::Clip(ClipError::OutOfMemory { .. })), "{detect:?}");
        let dino = crate::dinov2::Dinov2Error::from(candle_core::Error::Msg(oom.into()));
        assert!(dino.to_string().starts_with("the GPU ran out of memory"), "{dino}");
        let shape = || candle_core::Error::Msg("shape mismatch in matmul".into());
        assert!(matches!(ClipError::from(shape()), ClipError::Tensor(_)));
        assert!(matches!(crate::detect::DetectError::from(shape()), crate::detect::DetectError::Tensor(_)));
        assert!(matches!(crate::dinov2::Dinov2Error::from(shape()), crate::dinov2::Dinov2Error::Tensor(_)));
    }

    #[test]
    fn precisions_run_where_their_kernels_exist() {
        for kernels in Kernels::ALL {
            for gpu in [DeviceKind::Cuda, DeviceKind::Metal] {
                for precision in [Precision::F32, Precision::Bf16, Precision::F16] {
                    assert!(precision.check_on(gpu, kernels).is_ok(), "{precision:?} on {gpu:?}");
                }
            }
            assert!(Precision::F32.check(&Device::Cpu, kernels).is_ok());
        }
        // The CPU's generic kernels run what a GPU runs, in candle's types.
        assert!(Precision::F16.check(&Device::Cpu, Kernels::Generic).is_ok());
        assert!(Precision::Bf16.check(&Device::Cpu, Kernels::Generic).is_ok());
        assert_eq!(Precision::F16.dtype(Kernels::Generic), DType::F16);
        assert_eq!(Precision::Bf16.dtype(Kernels::Generic), DType::BF16);
        // The native kernels keep f32 activations; bf16 only inside the packed matmul.
        assert_eq!(Precision::Bf16.dtype(Kernels::Native), DType::F32);
        assert_eq!(Precision::Bf16.check(&Device::Cpu, Kernels::Native).is_ok(), packed::supports(Precision::Bf16));
        let f16 = Precision::F16.check(&Device::Cpu, Kernels::Native).unwrap_err().to_string();
        assert!(f16.contains("f16 precision is for GPUs") && f16.contains("Use --precision f32"), "{f16}");
        assert_eq!(f16.contains("--precision bf16"), packed::supports(Precision::Bf16), "{f16}");
        assert_eq!(DeviceKind::chosen(true), DeviceKind::Cpu);
    }

    #[test]
    fn without_a_gpu_backend_the_device_is_the_cpu_and_asked_gpus_are_refused() {
        assert!(device(true).unwrap().is_cpu());
        assert_eq!(free_memory(&Device::Cpu), None);
        assert_eq!(device_name(&Device::Cpu), "CPU");
        if DeviceKind::built_gpu().is_none() {
            assert!(device(false).unwrap().is_cpu());
            for gpu in [DeviceKind::Cuda, DeviceKind::Metal] {
                assert!(gpu.open().unwrap_err().to_string().contains("--features"));
            }
        }
    }
}
