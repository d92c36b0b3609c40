//! The command line: `alfa` opens the inspection window; subcommands work headless.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::bench;
use crate::clip::{self, Clip, DownloadObserver, ModelRequest, Precision, TokenizerSource};
use crate::dinov2;
use crate::options::{GuiArgs, ModelArgs};

mod analysis;
mod detect;
mod embed;
mod eval;
mod refs;
mod prompts;
mod watch;
pub mod recipe;
mod threshold;

#[derive(Parser, Debug)]
#[command(
    name = "alfa",
    version,
    about = "Zero- and few-shot visual anomaly detection with CLIP (ALFA)",
    long_about = "Zero- and few-shot visual anomaly detection with CLIP (ALFA).\n\n\
        Without a subcommand, opens the inspection window with PATHs (images or folders) loaded.\n\
        Models: --model takes a folder (open_clip_config.json + weights, and tokenizer.json if it has \
        its own), a weights file (.safetensors, .bin, .pt, .pth) or a Hugging Face repo id; the default \
        is downloaded once into the Hugging Face cache. CLIP's tokenizer is built in.",
    after_long_help = "Environment (read once per process):\n  \
        ALFA_KERNELS=native|generic  native: this crate's CPU kernels (the default); generic: candle's own \
        operations, what CUDA and Metal run\n  \
        ALFA_CPU=avx512|avx2|portable  the native kernels' instruction family [default: the widest this CPU \
        has]; a narrower one measures or tests it (avx2: the packed AVX2 matmul, f32 only; portable: the gemm \
        crate's matmul); a family this CPU lacks is refused",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub gui: GuiArgs,
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
    /// descriptors, stage times); OUT/scores.csv lists the image scores and verdicts,
    /// OUT/summary.json the counts. With a threshold (--threshold), each image is OK or NG.
    /// A failed image is named and the others still written.
    ///
    /// Exit codes: 0 every image analysed and none NG; 3 some NG; 4 some images failed
    /// (none of the others NG); 5 some failed and some NG; 130 stopped by Ctrl-C or
    /// SIGTERM (what was done is written; --resume continues); 1 the run could not
    /// start or broke off (the message says why); 2 a usage error.
    Detect(detect::DetectArgs),
    /// Watch a folder (a hot folder) and analyse each image that appears in it once it is
    /// completely written: the files `alfa detect` writes, plus one JSON line per image in
    /// OUT/results.jsonl.
    ///
    /// A file is taken once its size and times stayed the same for --settle-ms (a file
    /// renamed into the folder is stable at once); hidden files and temporary names
    /// (x.png.part, x.tmp) wait until renamed. Images already in the folder are analysed
    /// too, unless an earlier watch into the same OUT finished them. A file that cannot
    /// be read is named and the watch goes on; --done moves analysed inputs, nothing is
    /// deleted.
    ///
    /// The class (--class, else the folder's name) recipe gives the method, settings and
    /// thresholds not given here, as for `alfa detect`; a recipe made with another model,
    /// method or settings is refused unless --threshold replaces its thresholds (watch has
    /// no --force).
    ///
    /// Exit codes: 130 stopped by Ctrl-C or SIGTERM (after the current image;
    /// scores.csv and summary.json written); 1 the watch could not start, the folder
    /// disappeared, or an output could not be written (a full disk: the message names
    /// it); 2 a usage error.
    Watch(watch::WatchArgs),
    /// Evaluate a method (ALFA or a baseline), or saved maps, on MVTec AD, VisA or a folder
    /// dataset: image AUROC / AUPR / F1-max and pixel AUROC / PRO / F1-max per class and mean.
    Eval(eval::EvalArgs),
    /// Normal reference images of a class, for few-shot detection (in its recipe).
    Refs(refs::RefsArgs),
    /// Class recipes: one folder per class with everything an OK/NG decision needs
    /// (prompt set, reference images, thresholds, model and method). List, show, export
    /// and import them, or migrate the old ./prompts files.
    Recipe(recipe::RecipeArgs),
    /// Set a class's thresholds (OK/NG on image scores, region on map values) from good
    /// images at a target false-positive rate, as the app does, or by hand; stored in
    /// the class's recipe with the model, method and settings they were set with.
    Threshold(threshold::ThresholdArgs),
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
    /// Print the images' DINOv2 patch features instead of CLIP embeddings: vits14 or
    /// vitb14 (from the hub, lmz/candle-dino-v2), or a .safetensors file or a folder.
    #[arg(long, value_name = "M", conflicts_with = "texts")]
    pub dinov2: Option<String>,
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
    /// Time the image tower's linear layers alone (GFLOP/s of the matmul on the CPU,
    /// in the kernel family ALFA_CPU chooses) instead of the towers.
    #[arg(long, conflicts_with = "engine")]
    pub matmul: bool,
    /// With --engine: also time the paper's `pixels` window mode (hundreds of full forwards).
    #[arg(long, requires = "engine")]
    pub pixels: bool,
    /// With --engine: side of the square test image, in pixels.
    #[arg(long, default_value_t = 900, requires = "engine")]
    pub image_size: u32,
    /// With --engine: CLIP's tokenizer.json [default: CLIP's, built in].
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
    /// Time DINOv2 with these weights (vits14, vitb14, a file or a folder) instead of
    /// CLIP's towers; with --engine, add few-shot detection on a bank of DINOv2 patches.
    #[arg(long, value_name = "M")]
    pub dinov2: Option<String>,
}

/// Runs the command; returns the process's exit code (see `alfa detect --help`).
pub fn run(cli: Cli) -> Result<u8> {
    let done = |result: Result<()>| result.map(|()| 0);
    match cli.command {
        None => done(crate::app::run(cli.gui)),
        Some(Command::Embed(args)) => done(embed::run(args)),
        Some(Command::Detect(args)) => detect::run(args).map(|status| status.exit_code()),
        Some(Command::Watch(args)) => watch::run(args),
        Some(Command::Refs(args)) => done(refs::run(args)),
        Some(Command::Recipe(args)) => done(recipe::run(args)),
        Some(Command::Threshold(args)) => done(threshold::run(args)),
        Some(Command::Eval(args)) => done(eval::run(args)),
        Some(Command::Bench(args)) => done(run_bench(args)),
        Some(Command::Screenshot(args)) => done(crate::app::screenshot(args.gui, args.out)),
        Some(Command::Prompts(args)) => done(prompts::run(args)),
    }
}

/// The detection settings a command may be given; what is not given comes from the
/// class's recipe, else the defaults.
#[derive(Args, Debug, Default, Clone)]
pub struct SettingsArgs {
    /// Window sizes of the fine-grained aligner, in patches [default: the recipe's, else 2,3].
    #[arg(long, value_delimiter = ',', value_name = "S,...")]
    pub scales: Option<Vec<usize>>,
    /// `tokens`: only the window's patch tokens go through the ViT (fast);
    /// `pixels`: the masked image does, once per window (the paper's, slow)
    /// [default: the recipe's, else tokens].
    #[arg(long, value_enum)]
    pub window_mode: Option<crate::detect::WindowMode>,
    /// Gaussian smoothing of the map, in pixels of the input image [default: the
    /// recipe's, else 4].
    #[arg(long, value_name = "PX")]
    pub sigma: Option<f32>,
    /// Features of ALFA's few-shot memory bank: `clip` (window features, the paper's) or
    /// `dinov2` (DINOv2 patches, AnomalyDINO; see --dino-model) [default: the recipe's,
    /// else clip].
    #[arg(long, value_enum, value_name = "B")]
    pub refs_backbone: Option<crate::detect::RefsBackbone>,
}

impl SettingsArgs {
    /// Every setting is given: a recipe's would change none.
    pub fn all_given(&self) -> bool {
        self.scales.is_some() && self.window_mode.is_some() && self.sigma.is_some() && self.refs_backbone.is_some()
    }

    /// `settings` with what is given here in place.
    pub fn apply(&self, settings: &mut crate::detect::DetectSettings) {
        if let Some(scales) = &self.scales {
            settings.scales = scales.clone();
        }
        if let Some(mode) = self.window_mode {
            settings.window_mode = mode;
        }
        if let Some(sigma) = self.sigma {
            settings.sigma = sigma;
        }
        if let Some(backbone) = self.refs_backbone {
            settings.refs_backbone = backbone;
        }
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

/// A terminal progress bar for downloads (shown once a download starts).
fn download_bar() -> Arc<dyn DownloadObserver> {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {bytes}/{total_bytes} ({eta})").expect("the template is valid"),
    );
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    Arc::new(DownloadBar { bar })
}

/// `model`'s request, with a terminal progress bar for downloads. `--precision` is
/// checked first, for the device and kernels the load will use: a precision that
/// cannot run there is refused before anything is read or downloaded.
pub(crate) fn model_request(model: &ModelArgs) -> Result<ModelRequest> {
    model.precision.check_on(clip::DeviceKind::chosen(model.cpu), clip::Kernels::from_env()?)?;
    Ok(model.request(Some(download_bar())))
}

/// Resolves (downloading if needed, with the progress bar) and loads DINOv2 `model`
/// (`--dino-model`; `None`: ViT-S/14) on the device CLIP uses.
pub(crate) fn load_dinov2(model: Option<&str>, cpu: bool) -> Result<dinov2::Dinov2> {
    let request = dinov2::DinoRequest { model: model.map(str::to_owned), observer: Some(download_bar()) };
    let files = request.resolve()?;
    Ok(dinov2::Dinov2::load(&files, &clip::device(cpu)?, clip::Kernels::from_env()?)?)
}

/// Resolves (downloading if needed) and loads `model` on its device.
pub(crate) fn load_model(model: &ModelArgs) -> Result<Clip> {
    load_model_files(model, &model_request(model)?.resolve()?)
}

/// The model in `files` on the device `--cpu` chooses, with the kernels
/// `ALFA_KERNELS` chooses.
pub(crate) fn load_model_files(model: &ModelArgs, files: &clip::ModelFiles) -> Result<Clip> {
    let kernels = clip::Kernels::from_env()?;
    let device = clip::device(model.cpu)?;
    Ok(Clip::load(files, &device, model.precision, kernels)?)
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
    if args.matmul {
        anyhow::ensure!(args.device == clip::DeviceKind::Cpu, "--matmul times the CPU kernels: leave out --device");
        let report = bench::matmul(&args.arch, args.repeats.max(1), args.precision, log)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.table());
        }
        return Ok(());
    }
    let kernels = clip::Kernels::from_env()?;
    let target = bench::BenchTarget { device: args.device.open()?, kernels };
    let on_cpu = args.device == clip::DeviceKind::Cpu;
    let dino = args.dinov2.as_deref().map(|m| load_dinov2(Some(m), on_cpu)).transpose()?.map(Arc::new);
    if args.engine {
        let tokenizer = TokenizerSource::or_embedded(args.tokenizer);
        let (size, repeats) = (args.image_size, args.repeats.max(1));
        let report = bench::engine(&args.arch, &tokenizer, size, repeats, args.pixels, args.precision, &target, dino, log)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.table());
        }
        return Ok(());
    }
    if let Some(dino) = dino {
        let report = bench::dinov2_forward(&dino, args.repeats.max(1), log)?;
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
