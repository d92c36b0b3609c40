//! `alfa detect`: anomaly maps, overlays and JSON records for images and folders.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{model_request, progress_label};
use crate::batch::{self, BatchSpec, ClassSources, Decision, Existing, Observer, OverlayRange, Plan, Runner, Shard};
use crate::clip::{self, Clip};
use crate::detect::baselines::BaselineOptions;
use crate::detect::colormap::Colormap;
use crate::detect::inputs::InputImage;
use crate::detect::text_cache::default_cache_dir;
use crate::detect::{DetectSettings, Detector, MethodKind, WindowMode};
use crate::options::ModelArgs;

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The method whose maps to write: ALFA, or a baseline to compare it with (the
    /// same files; the JSON record has what that method knows). Only alfa and
    /// winclip (WinCLIP+) use reference images.
    #[arg(long, value_enum, default_value_t = MethodKind::Alfa)]
    pub method: MethodKind,
    /// AnoVL only (anovl-tfa, anovl-tta): the views its image score averages, 1 (the
    /// input alone, as its paper) or 22 (its public code's views) [default: 1].
    #[arg(long, value_name = "N")]
    pub anovl_views: Option<usize>,
    /// Object class of the images (bottle, metal_nut, pcb1, ... or any name: unknown
    /// classes use the generic prompt set). Optional for images in an MVTec AD layout
    /// (<class>/test/<defect>/), which names the class.
    #[arg(long)]
    pub class: Option<String>,
    /// A prompt-set file to use instead of the class's own.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Folder of prompt sets that take precedence over the shipped ones.
    #[arg(long, value_name = "DIR", default_value = "prompts")]
    pub prompts_dir: PathBuf,
    /// Folder of normal reference images for few-shot mode, instead of the class's
    /// own (<prompts-dir>/<class>.refs/, managed with `alfa refs`).
    #[arg(long, value_name = "DIR")]
    pub refs: Option<PathBuf>,
    /// Use K of the reference images, drawn with --seed (default: all of them).
    #[arg(long, value_name = "K")]
    pub shots: Option<usize>,
    /// Seed of the --shots draw.
    #[arg(long, default_value_t = 0, requires = "shots")]
    pub seed: u64,
    /// Ignore reference images even when the class has some.
    #[arg(long, conflicts_with_all = ["refs", "shots"])]
    pub zero_shot: bool,
    /// Window sizes of the fine-grained aligner, in patches.
    #[arg(long, value_delimiter = ',', default_value = "2,3", value_name = "S,...")]
    pub scales: Vec<usize>,
    /// `tokens`: only the window's patch tokens go through the ViT (fast);
    /// `pixels`: the masked image does, once per window (the paper's, slow).
    #[arg(long, value_enum, default_value_t = WindowMode::Tokens)]
    pub window_mode: WindowMode,
    /// Gaussian smoothing of the map, in pixels of the input image.
    #[arg(long, default_value_t = 4.0, value_name = "PX")]
    pub sigma: f32,
    /// Output folder: <stem>.tiff (float32 map at the image's size), <stem>_overlay.png,
    /// <stem>.json, and scores.csv (image scores). MVTec AD inputs keep the evaluation
    /// layout <class>/test/<defect>/<stem>.tiff.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also print each image's record as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Overwrite outputs that already exist.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Continue an interrupted run into the same --out: images whose outputs are all
    /// there are kept (and counted), the rest analysed. The options must be the
    /// interrupted run's.
    #[arg(long)]
    pub resume: bool,
    /// OK/NG threshold on image scores for this run: an image scoring at or above it
    /// is NG (its verdict goes into the record, scores.csv and the overlay).
    #[arg(long, value_name = "VALUE")]
    pub threshold: Option<f32>,
    /// Region threshold on map values for this run: where the map is at or above it
    /// is outlined in the overlay.
    #[arg(long, value_name = "VALUE", requires = "threshold")]
    pub region_threshold: Option<f32>,
    /// Analyse only part I of N of the images (1 <= I <= N), in a fixed order that does
    /// not depend on the file system: N machines with 1/N, ..., N/N into one --out (or
    /// N folders, merged) together write what one run writes.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Also write OUT/report.html: one page that works offline with the run's summary,
    /// a histogram of the scores with the threshold and a gallery of the overlays
    /// sorted by score, filterable by verdict.
    #[arg(long)]
    pub report: bool,
    /// Map values spanned by the overlay's colours: `MIN,MAX`, or `auto` for each
    /// image's own range (hides how anomalous an image is overall).
    #[arg(long, default_value = "0,1", value_name = "MIN,MAX|auto")]
    pub overlay_range: OverlayRange,
    /// Colour map of the overlay (viridis reads for colour-blind viewers).
    #[arg(long, value_enum, default_value_t = Colormap::Turbo)]
    pub colormap: Colormap,
    /// Images or folders (searched recursively).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

pub fn run(args: DetectArgs) -> Result<batch::RunStatus> {
    let few_shot_method = matches!(args.method, MethodKind::Alfa | MethodKind::Winclip);
    if !few_shot_method && (args.refs.is_some() || args.shots.is_some()) {
        bail!("--method {} is zero-shot only: it takes no reference images (drop --refs / --shots)", args.method.name());
    }
    let options = BaselineOptions::for_method(args.method, args.anovl_views)?;
    let settings = DetectSettings {
        scales: args.scales.clone(),
        window_mode: args.window_mode,
        sigma: args.sigma,
        ..Default::default()
    };
    // What can be checked without the model, before it is loaded; the scales against
    // its patch grid right after.
    settings.validate(usize::MAX)?;
    let decision = match args.threshold {
        Some(image) if !image.is_finite() => bail!("--threshold {image} is not a number"),
        Some(image) => Some(Decision { image, region: args.region_threshold, how: "--threshold on the command line".into() }),
        None => None,
    };
    let spec = BatchSpec {
        method: args.method,
        class: args.class.clone(),
        sources: ClassSources {
            prompts_file: args.prompts.clone(),
            prompts_dir: args.prompts_dir.clone(),
            references: args.refs.clone(),
            shots: args.shots,
            seed: args.seed,
            zero_shot: args.zero_shot,
        },
        settings,
        out: args.out.clone(),
        overlay_range: args.overlay_range,
        colormap: args.colormap,
        decision,
        existing: match (args.force, args.resume) {
            (true, _) => Existing::Overwrite,
            (_, true) => Existing::Resume,
            _ => Existing::Refuse,
        },
        shard: args.shard,
    };
    let plan = Plan::new(&args.inputs, &spec)?;
    if args.resume && plan.finished() > 0 {
        eprintln!("resuming: {} of {} image(s) finished by an earlier run", plan.finished(), plan.images.len());
    }

    let files = model_request(&args.model).resolve()?;
    let identity = files.identity();
    plan.check_resumable(args.method, &identity, &spec.settings)?;
    let clip = Clip::load(&files, &clip::device(args.model.cpu)?, args.model.precision)?;
    let detector = Detector::new(clip, &identity, default_cache_dir().as_deref());
    let analyser = batch::Analyser::new(args.method, options, detector, spec.settings.clone(), spec.sources.clone())?;
    let mut runner = Runner { analyser, spec: &spec, model: identity, precision: args.model.precision };

    let stop = stop_on_interrupt()?;
    let observer = Terminal::new(plan.images.len() - plan.finished(), args.json);
    let result = runner.run(&plan, &observer, &stop)?;
    observer.bar.finish_and_clear();
    eprintln!("{}", result.summary.line(spec.decision.is_some()));
    if args.report {
        let page = runner.write_report(&result)?;
        eprintln!("report: {}", page.display());
    }
    if result.summary.failed > 0 {
        eprintln!("{} image(s) failed (reasons above); the others were written to {}", result.summary.failed, args.out.display());
    }
    Ok(result.summary.status())
}

/// A flag set by Ctrl-C or SIGTERM (a scheduler stopping the job); a second one while
/// the batch stops ends the process at once.
fn stop_on_interrupt() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
            .context("cannot install the Ctrl-C handler")?;
    }
    Ok(stop)
}

/// Progress on the terminal: a bar over the images (and one over a class's reference
/// images while its bank is built), notes above them, records on stdout.
struct Terminal {
    bars: MultiProgress,
    bar: ProgressBar,
    references: RefCell<Option<ProgressBar>>,
    json: bool,
}

impl Terminal {
    fn new(images: usize, json: bool) -> Self {
        let bars = MultiProgress::new();
        let bar = if images < 2 { ProgressBar::hidden() } else { bars.add(ProgressBar::new(images as u64)) };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images ({eta} left) {wide_msg}").expect("the template is valid"),
        );
        Self { bars, bar, references: RefCell::new(None), json }
    }
}

impl Observer for Terminal {
    fn message(&self, text: &str) {
        self.bars.suspend(|| eprintln!("{text}"));
    }

    fn references(&self, done: usize, total: usize) {
        let mut slot = self.references.borrow_mut();
        let bar = slot.get_or_insert_with(|| {
            let bar = self.bars.add(ProgressBar::new(total as u64));
            bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} reference images").expect("the template is valid"));
            bar
        });
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
            self.bars.remove(bar);
            *slot = None;
        }
    }

    fn image_started(&self, image: &InputImage) {
        self.bar.set_message(progress_label(&image.path));
    }

    fn image_finished(&self, image: &InputImage, result: &Result<String, String>) {
        match result {
            Ok(json) if self.json => self.bars.suspend(|| {
                let mut stdout = std::io::stdout().lock();
                // A closed pipe (`| head`) is not worth failing the run for.
                let _ = writeln!(stdout, "{json}");
            }),
            Ok(_) => {}
            Err(e) => self.bars.suspend(|| eprintln!("error: {}: {e}", image.path.display())),
        }
        self.bar.inc(1);
    }
}
