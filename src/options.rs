//! Options that both the command line and the window take (the model, the class, the
//! images to open), defined here so that neither front end imports the other.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::clip::{DownloadObserver, ModelRequest, Precision};

#[derive(Args, Debug, Default, Clone)]
pub struct GuiArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Object class of the images (e.g. bottle, metal_nut, pcb1).
    #[arg(long)]
    pub class: Option<String>,
    /// Folder of the class recipes (prompt set, references, thresholds per class), as
    /// for the commands; remembered [default: the one in Settings, else $ALFA_RECIPES,
    /// else the per-user data folder].
    #[arg(long, value_name = "DIR")]
    pub recipes: Option<PathBuf>,
    /// Images or folders to open.
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ModelArgs {
    /// Model: a folder, a weights file, or a Hugging Face repo id
    /// [default: timm/vit_base_patch16_plus_240.laion400m_e32].
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Architecture of a weights file that has no open_clip_config.json beside it
    /// (ViT-B-32, ViT-B-16, ViT-B-16-plus-240, ViT-L-14, ViT-L-14-336, ...-quickgelu).
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// tokenizer.json to use instead of the model's [default: the model's own tokenizer.json,
    /// else CLIP's, built in].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Run on the CPU even when built with CUDA or Metal (such a build otherwise stops
    /// with an error when its GPU cannot be used; it never falls back by itself). On a
    /// GPU, windows go through the model in batches sized from its free memory (a
    /// recipe's window_batch, 256 by default, is the least), and a batch that runs out
    /// of memory is halved and retried.
    #[arg(long)]
    pub cpu: bool,
    /// Number format of the image tower: f32 computes what OpenCLIP computes; bf16
    /// (CPUs with AVX512-BF16) detects about 1.5x as fast, with slightly different maps;
    /// f16 is for GPUs (refused on the CPU). On a GPU, bf16 and f16 run the image
    /// tower's transformer in that type; the text tower, the aligner and the maps stay f32.
    #[arg(long, value_enum, default_value_t = Precision::F32, value_name = "P")]
    pub precision: Precision,
}

impl ModelArgs {
    /// What to resolve and download, reporting download progress to `observer`.
    pub fn request(&self, observer: Option<Arc<dyn DownloadObserver>>) -> ModelRequest {
        ModelRequest {
            model: self.model.clone(),
            arch: self.arch.clone(),
            tokenizer: self.tokenizer.clone(),
            observer,
        }
    }
}

/// The DINOv2 model of few-shot banks on DINOv2 patches (`--refs-backbone dinov2`,
/// `--method anomalydino`).
#[derive(Args, Debug, Default, Clone)]
pub struct DinoModelArg {
    /// DINOv2 model: vits14 or vitb14 (downloaded from the Hugging Face repo
    /// lmz/candle-dino-v2 into its cache), or a .safetensors file, or a folder holding
    /// one [default: vits14].
    #[arg(long, value_name = "FILE|DIR")]
    pub dino_model: Option<String>,
}
