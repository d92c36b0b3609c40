//! The command line: `alfa` opens the inspection window; subcommands work headless.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::bench;
use crate::clip::{self, Clip, DownloadObserver, ModelRequest, Precision};

mod detect;
mod embed;
mod eval;
mod refs;
mod prompts;

#[derive(Parser, Debug)]
#[command(
    name = "alfa",
    version,
    about = "Zero- and few-shot visual anomaly detection with CLIP (ALFA)",
    long_about = "Zero- and few-shot visual anomaly detection with CLIP (ALFA).\n\n\
        Without a subcommand, opens the inspection window with PATHs (images or folders) loaded.\n\
        Models: --model takes a folder (open_clip_config.json + weights + tokenizer.json), a weights \
        file (.safetensors, .bin, .pt, .pth) or a Hugging Face repo id; the default is downloaded once \
        into the Hugging Face cache.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub gui: GuiArgs,
}

#[derive(Args, Debug, Default, Clone)]
pub struct GuiArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Object class of the images (e.g. bottle, metal_nut, pcb1).
    #[arg(long)]
    pub class: Option<String>,
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
    /// tokenizer.json to use instead of the model's (CLIP's BPE).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Run on the CPU even when built with CUDA or Metal (such a build otherwise stops
    /// with an error when its GPU cannot be used; it never falls back by itself).
    #[arg(long)]
    pub cpu: bool,
    /// Number format of the image tower: f32 computes what OpenCLIP computes; bf16
    /// (CPUs with AVX512-BF16) detects about 1.5x as fast, with slightly different maps.
    #[arg(long, value_enum, default_value_t = Precision::F32, value_name = "P")]
    pub precision: Precision,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print L2-normalised CLIP embeddings of images and texts as JSON.
    ///
    /// Output: {"images": [{"file", "embedding"}], "texts": [{"text", "embedding"}]},
    /// in input order.
    Embed(EmbedArgs),
    /// Anomaly maps, overlays and JSON records for images and folders (ALFA: zero-shot, or
    /// few-shot with the class's reference images).
    ///
    /// For each image: OUT/<stem>.tiff (float32 map at the image's size), OUT/<stem>_overlay.png
    /// (heatmap with a colour legend) and OUT/<stem>.json (scores, kept and dropped prompts,
    /// descriptors, stage times); OUT/scores.csv lists the image scores. Exits non-zero
    /// when any image failed; the others are still written.
    Detect(detect::DetectArgs),
    /// Evaluate a method (ALFA or a baseline), or saved maps, on MVTec AD, VisA or a folder
    /// dataset: image AUROC / AUPR / F1-max and pixel AUROC / PRO / F1-max per class and mean.
    Eval(eval::EvalArgs),
    /// Normal reference images of a class, for few-shot detection.
    Refs(refs::RefsArgs),
    /// Benchmarks (timings on random weights of the real shapes).
    Bench(BenchArgs),
    /// Open the inspection window with PATHs, wait for the analysis, save the window as
    /// PNG and close (needs a display: under Xvfb on a headless machine, see the README).
    Screenshot(ScreenshotArgs),
    /// Prompt sets: generate them with an LLM (Ollama, OpenAI, ...), show a class's prompts.
    Prompts(prompts::PromptsArgs),
}

#[derive(Args, Debug)]
pub struct ScreenshotArgs {
    /// PNG file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub gui: GuiArgs,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file to embed (repeatable).
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// Text to embed (repeatable).
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Architecture whose shapes are timed.
    #[arg(long, default_value = clip::config::DEFAULT_ARCH)]
    pub arch: String,
    /// Timed runs per case (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Time the whole detector (one image, the shipped `bottle` prompts) instead of the towers.
    #[arg(long)]
    pub engine: bool,
    /// With --engine: also time the paper's `pixels` window mode (hundreds of full forwards).
    #[arg(long, requires = "engine")]
    pub pixels: bool,
    /// With --engine: side of the square test image, in pixels.
    #[arg(long, default_value_t = 900, requires = "engine")]
    pub image_size: u32,
    /// With --engine: CLIP's tokenizer.json [default: from the Hugging Face cache or hub].
    #[arg(long, value_name = "FILE", requires = "engine")]
    pub tokenizer: Option<PathBuf>,
    /// Number format of the image tower (see `alfa detect --help`).
    #[arg(long, value_enum, default_value_t = Precision::F32, value_name = "P")]
    pub precision: Precision,
    /// Device to time on: cuda and metal need a build with `--features cuda` / `metal`,
    /// and a usable GPU (no fallback to the CPU).
    #[arg(long, value_enum, default_value_t = clip::DeviceKind::Cpu, value_name = "D")]
    pub device: clip::DeviceKind,
    /// CPU threads for the kernels (rayon's pool and the matmuls) [default: all cores,
    /// or RAYON_NUM_THREADS].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => crate::app::run(cli.gui),
        Some(Command::Embed(args)) => embed::run(args),
        Some(Command::Detect(args)) => detect::run(args),
        Some(Command::Refs(args)) => refs::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Bench(args)) => run_bench(args),
        Some(Command::Screenshot(args)) => crate::app::screenshot(args.gui, args.out),
        Some(Command::Prompts(args)) => prompts::run(args),
    }
}

/// A progress bar's label for `path`: the file and its folder, `…/broken_large/015.png`.
/// The bar cuts a message that does not fit at its end, and a whole path's end is the
/// part that says which image it is.
pub(crate) fn progress_label(path: &Path) -> String {
    let mut tail: Vec<String> = path.iter().rev().take(2).map(|c| c.to_string_lossy().into_owned()).collect();
    tail.reverse();
    let label = tail.join("/");
    if path.iter().count() > 2 { format!("…/{label}") } else { label }
}

/// A terminal progress bar for model downloads.
struct DownloadBar {
    bar: ProgressBar,
}

impl DownloadObserver for DownloadBar {
    fn progress(&self, file: &str, done: u64, total: u64) {
        if total > 0 {
            self.bar.set_length(total);
        }
        if !file.is_empty() {
            self.bar.set_message(file.to_owned());
        }
        self.bar.set_position(done);
    }
}

impl ModelArgs {
    pub fn request(&self) -> ModelRequest {
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} ({eta})")
                .expect("the template is valid"),
        );
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        ModelRequest {
            model: self.model.clone(),
            arch: self.arch.clone(),
            tokenizer: self.tokenizer.clone(),
            observer: Some(Arc::new(DownloadBar { bar })),
        }
    }

    pub fn load(&self) -> Result<Clip> {
        self.load_files(&self.request().resolve()?)
    }

    /// The model in `files` on the device `--cpu` chooses, with the kernels
    /// `ALFA_KERNELS` chooses.
    pub fn load_files(&self, files: &clip::ModelFiles) -> Result<Clip> {
        let kernels = clip::Kernels::from_env()?;
        let device = clip::device(self.cpu)?;
        Ok(Clip::load(files, &device, self.precision, kernels)?)
    }
}

/// Sets the number of CPU threads every kernel uses: rayon's global pool (the
/// native kernels) and candle's count (its matmuls), which both read RAYON_NUM_THREADS.
/// Must run before any of them has started: `run_bench` calls it first thing.
fn set_cpu_threads(threads: usize) -> Result<()> {
    // SAFETY: called on the main thread before the bench starts any other thread
    // (nothing reads or writes the environment concurrently).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot set {threads} threads: {e}"))?;
    anyhow::ensure!(candle_core::utils::get_num_threads() == threads, "candle does not see {threads} threads");
    Ok(())
}

fn run_bench(args: BenchArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        set_cpu_threads(usize::from(threads))?;
    }
    let log = |line: &str| eprintln!("{line}");
    let kernels = clip::Kernels::from_env()?;
    let target = bench::BenchTarget { device: args.device.open()?, kernels };
    if args.engine {
        let tokenizer = match args.tokenizer {
            Some(t) => t,
            None => clip::source::default_tokenizer(ModelArgs::default().request().observer)?,
        };
        let report = bench::engine(
            &args.arch,
            &tokenizer,
            args.image_size,
            args.repeats.max(1),
            args.pixels,
            args.precision,
            &target,
            log,
        )?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.table());
        }
        return Ok(());
    }
    let report = bench::clip_forward(&args.arch, args.repeats.max(1), args.precision, &target, log)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_labels_keep_the_end_of_a_path() {
        let long = Path::new("/data/mvtec_anomaly_detection/bottle/test/broken_large/015.png");
        assert_eq!(progress_label(long), "…/broken_large/015.png");
        assert_eq!(progress_label(Path::new("broken_large/015.png")), "broken_large/015.png");
        assert_eq!(progress_label(Path::new("015.png")), "015.png");
    }
}
