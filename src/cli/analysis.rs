//! What `alfa detect` and `alfa watch` share: the options that say how images are
//! analysed and judged, the batch they describe, the model they load, and Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::model_request;
use crate::batch::{self, BatchSpec, ClassSources, Decision, Existing, OverlayRange, Plan, Runner, Shard};
use crate::clip::{self, Clip};
use crate::detect::baselines::BaselineOptions;
use crate::detect::colormap::Colormap;
use crate::detect::text_cache::default_cache_dir;
use crate::detect::{DetectSettings, Detector, MethodKind, WindowMode};
use crate::options::ModelArgs;

#[derive(Args, Debug)]
pub struct AnalysisArgs {
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
    /// Also print each image's record as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// OK/NG threshold on image scores for this run: an image scoring at or above it
    /// is NG (its verdict goes into the record, scores.csv and the overlay).
    #[arg(long, value_name = "VALUE")]
    pub threshold: Option<f32>,
    /// Region threshold on map values for this run: where the map is at or above it
    /// is outlined in the overlay.
    #[arg(long, value_name = "VALUE", requires = "threshold")]
    pub region_threshold: Option<f32>,
    /// Map values spanned by the overlay's colours: `MIN,MAX`, or `auto` for each
    /// image's own range (hides how anomalous an image is overall).
    #[arg(long, default_value = "0,1", value_name = "MIN,MAX|auto")]
    pub overlay_range: OverlayRange,
    /// Colour map of the overlay (viridis reads for colour-blind viewers).
    #[arg(long, value_enum, default_value_t = Colormap::Turbo)]
    pub colormap: Colormap,
}

impl AnalysisArgs {
    /// The batch these options describe, writing into `out`; refuses what can be checked
    /// before the model is loaded (the scales against its patch grid come after).
    pub fn spec(&self, out: PathBuf, existing: Existing, shard: Option<Shard>) -> Result<BatchSpec> {
        let few_shot_method = matches!(self.method, MethodKind::Alfa | MethodKind::Winclip);
        if !few_shot_method && (self.refs.is_some() || self.shots.is_some()) {
            bail!("--method {} is zero-shot only: it takes no reference images (drop --refs / --shots)", self.method.name());
        }
        BaselineOptions::for_method(self.method, self.anovl_views)?;
        let settings = DetectSettings {
            scales: self.scales.clone(),
            window_mode: self.window_mode,
            sigma: self.sigma,
            ..Default::default()
        };
        settings.validate(usize::MAX)?;
        let decision = match self.threshold {
            Some(image) if !image.is_finite() => bail!("--threshold {image} is not a number"),
            Some(image) => Some(Decision { image, region: self.region_threshold, how: "--threshold on the command line".into() }),
            None => None,
        };
        Ok(BatchSpec {
            method: self.method,
            class: self.class.clone(),
            sources: ClassSources {
                prompts_file: self.prompts.clone(),
                prompts_dir: self.prompts_dir.clone(),
                references: self.refs.clone(),
                shots: self.shots,
                seed: self.seed,
                zero_shot: self.zero_shot,
            },
            settings,
            out,
            overlay_range: self.overlay_range,
            colormap: self.colormap,
            decision,
            existing,
            shard,
        })
    }

    /// Resolves (downloading if needed) and loads the model, and makes the runner of
    /// `spec`; the records `plan` found finished must be this model's and settings'.
    pub fn runner<'a>(&self, spec: &'a BatchSpec, plan: &Plan) -> Result<Runner<'a>> {
        let files = model_request(&self.model).resolve()?;
        let identity = files.identity();
        plan.check_resumable(self.method, &identity, &spec.settings)?;
        let clip = Clip::load(&files, &clip::device(self.model.cpu)?, self.model.precision)?;
        let detector = Detector::new(clip, &identity, default_cache_dir().as_deref());
        let options = BaselineOptions::for_method(self.method, self.anovl_views)?;
        let analyser = batch::Analyser::new(self.method, options, detector, spec.settings.clone(), spec.sources.clone())?;
        Ok(Runner { analyser, spec, model: identity, precision: self.model.precision })
    }
}

/// A flag set by Ctrl-C or SIGTERM (a scheduler stopping the job); a second one while
/// the batch stops ends the process at once.
pub fn stop_on_interrupt() -> Result<Arc<AtomicBool>> {
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
