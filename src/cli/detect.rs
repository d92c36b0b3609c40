//! `alfa detect`: anomaly maps, overlays and JSON records for images and folders.

use std::cell::RefCell;
use std::collections::BTreeMap;
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
use crate::detect::{DetectSettings, Detector, MethodKind};
use crate::options::ModelArgs;
use crate::recipe::{MethodRecipe, ModelStamp, Recipe, Recipes, thresholds_for_run};

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The method whose maps to write: ALFA, or a baseline to compare it with (the
    /// same files; the JSON record has what that method knows). Only alfa and
    /// winclip (WinCLIP+) use reference images [default: the class recipe's, else alfa].
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
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
    /// The class's recipe gives its prompt set (prompts.toml), references (refs/),
    /// method and settings (unless given here) and its OK/NG and region thresholds.
    #[command(flatten)]
    pub recipes: super::recipe::RecipesArg,
    /// Folder of normal reference images for few-shot mode, instead of the class's
    /// own (<recipes>/<class>/refs/, managed with `alfa refs`).
    #[arg(long, value_name = "DIR")]
    pub refs: Option<PathBuf>,
    /// Use K of the reference images, drawn with --seed [default: the recipe's, else
    /// all of them].
    #[arg(long, value_name = "K")]
    pub shots: Option<usize>,
    /// Seed of the --shots draw [default: the recipe's, else 0].
    #[arg(long, requires = "shots")]
    pub seed: Option<u64>,
    /// Ignore reference images even when the class has some.
    #[arg(long, conflicts_with_all = ["refs", "shots"])]
    pub zero_shot: bool,
    #[command(flatten)]
    pub settings: super::SettingsArgs,
    /// Output folder: <stem>.tiff (float32 map at the image's size), <stem>_overlay.png,
    /// <stem>.json, and scores.csv (image scores). MVTec AD inputs keep the evaluation
    /// layout <class>/test/<defect>/<stem>.tiff.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also print each image's record as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Overwrite outputs that already exist, and apply a recipe's thresholds even when
    /// it was made with another model, method or settings (with a warning).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Continue an interrupted run into the same --out: images whose outputs are all
    /// there are kept (and counted), the rest analysed. The options must be the
    /// interrupted run's.
    #[arg(long)]
    pub resume: bool,
    /// OK/NG threshold on image scores for this run: an image scoring at or above it
    /// is NG (its verdict goes into the record, scores.csv and the overlay)
    /// [default: the class recipe's, when it was made with this model, method and
    /// settings; a recipe made with others is refused unless --threshold or --force].
    #[arg(long, value_name = "VALUE")]
    pub threshold: Option<f32>,
    /// Region threshold on map values for this run: where the map is at or above it
    /// is outlined in the overlay [default: the class recipe's, as --threshold].
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
    let recipes = args.recipes.locate()?;
    if let Some(image) = args.threshold.filter(|t| !t.is_finite()) {
        bail!("--threshold {image} is not a number");
    }
    let mut spec = BatchSpec {
        method: args.method.unwrap_or(MethodKind::Alfa),
        class: args.class.clone(),
        sources: ClassSources {
            prompts_file: args.prompts.clone(),
            recipes: recipes.clone(),
            references: args.refs.clone(),
            shots: args.shots,
            seed: args.seed.unwrap_or(0),
            zero_shot: args.zero_shot,
        },
        settings: DetectSettings::default(),
        out: args.out.clone(),
        overlay_range: args.overlay_range,
        colormap: args.colormap,
        decisions: BTreeMap::new(),
        existing: match (args.force, args.resume) {
            (true, _) => Existing::Overwrite,
            (_, true) => Existing::Resume,
            _ => Existing::Refuse,
        },
        shard: args.shard,
    };
    // A method given here is checked before the output folder is made; one from a
    // recipe below.
    if let Some(method) = args.method {
        check_method_options(method, &args)?;
    }
    let plan = Plan::new(&args.inputs, &spec)?;
    // The classes' recipes (a malformed one is named with its line): the method and
    // settings not given come from them, and so do the thresholds.
    let mut classes: Vec<&str> = plan.images.iter().map(|i| i.class.as_str()).collect();
    classes.sort();
    classes.dedup();
    let mut class_recipes = BTreeMap::new();
    for class in &classes {
        crate::recipe::check_class_name(class).map_err(anyhow::Error::msg)?;
        if let Some(recipe) = recipes.read(class)? {
            class_recipes.insert(class.to_string(), recipe);
        }
    }
    let from_recipes = shared_method(&class_recipes);
    if let Some((class, method)) = &from_recipes
        && (args.method.is_none() || !args.settings.all_given())
    {
        eprintln!("method and settings not given here are the recipe's of `{class}` ({})", recipes.recipe_file(class).display());
        spec.method = args.method.unwrap_or(method.name);
        spec.settings = method.settings();
        if args.shots.is_none() && spec.method == method.name {
            spec.sources.shots = method.shots;
            spec.sources.seed = method.seed.unwrap_or(0);
        }
    }
    args.settings.apply(&mut spec.settings);
    check_method_options(spec.method, &args)?;
    let anovl_views = args.anovl_views.or_else(|| from_recipes.as_ref().and_then(|(_, m)| m.anovl_views).filter(|_| args.method.is_none()));
    let options = BaselineOptions::for_method(spec.method, anovl_views)?;
    // What can be checked without the model, before it is loaded; the scales against
    // its patch grid right after.
    spec.settings.validate(usize::MAX)?;
    if args.resume && plan.finished() > 0 {
        eprintln!("resuming: {} of {} image(s) finished by an earlier run", plan.finished(), plan.images.len());
    }

    let files = model_request(&args.model).resolve()?;
    let identity = files.identity();
    plan.check_resumable(spec.method, &identity, &spec.settings)?;
    let id = args.model.model.clone().unwrap_or_else(|| clip::DEFAULT_MODEL.to_owned());
    let needs_stamp = !class_recipes.is_empty();
    let stamp = if needs_stamp { Some(ModelStamp::of(&files, &id, args.model.precision, default_cache_dir().as_deref())?) } else { None };
    spec.decisions = decisions(&classes, &class_recipes, &recipes, stamp.as_ref(), &spec, &args)?;
    let clip = Clip::load(&files, &clip::device(args.model.cpu)?, args.model.precision)?;
    let detector = Detector::new(clip, &identity, default_cache_dir().as_deref());
    let analyser = batch::Analyser::new(spec.method, options, detector, spec.settings.clone(), spec.sources.clone())?;
    let mut runner = Runner { analyser, spec: &spec, model: identity, precision: args.model.precision };

    let stop = stop_on_interrupt()?;
    let observer = Terminal::new(plan.images.len() - plan.finished(), args.json);
    let result = runner.run(&plan, &observer, &stop)?;
    observer.bar.finish_and_clear();
    eprintln!("{}", result.summary.line(!spec.decisions.is_empty()));
    if args.report {
        let page = runner.write_report(&result)?;
        eprintln!("report: {}", page.display());
    }
    if result.summary.failed > 0 {
        eprintln!("{} image(s) failed (reasons above); the others were written to {}", result.summary.failed, args.out.display());
    }
    Ok(result.summary.status())
}

/// Options that `method` does not take are refused.
fn check_method_options(method: MethodKind, args: &DetectArgs) -> Result<()> {
    let few_shot_method = matches!(method, MethodKind::Alfa | MethodKind::Winclip);
    if !few_shot_method && (args.refs.is_some() || args.shots.is_some()) {
        bail!("--method {} is zero-shot only: it takes no reference images (drop --refs / --shots)", method.name());
    }
    BaselineOptions::for_method(method, args.anovl_views)?;
    Ok(())
}

/// The method and settings of the run's classes' recipes, when they all have the same
/// (with the first class that has them, for the message).
fn shared_method(recipes: &BTreeMap<String, Recipe>) -> Option<(String, MethodRecipe)> {
    let mut methods = recipes.iter().filter_map(|(class, r)| r.method.clone().map(|m| (class.clone(), m)));
    let first = methods.next()?;
    methods.all(|(_, m)| m == first.1).then_some(first)
}

/// Each class's OK/NG decision: `--threshold` (and `--region-threshold`) for all of
/// them, else the class recipe's thresholds when it was made with this model, method
/// and settings (another's are refused unless `--force`).
fn decisions(
    classes: &[&str],
    class_recipes: &BTreeMap<String, Recipe>,
    recipes: &Recipes,
    stamp: Option<&ModelStamp>,
    spec: &BatchSpec,
    args: &DetectArgs,
) -> Result<BTreeMap<String, Decision>> {
    let mut decisions = BTreeMap::new();
    for class in classes {
        let Some(recipe) = class_recipes.get(*class) else {
            if let Some(image) = args.threshold {
                decisions.insert(class.to_string(), Decision { image, region: args.region_threshold, how: "--threshold on the command line".into() });
            }
            continue;
        };
        let stamp = stamp.expect("computed where a class has a recipe");
        let path = recipes.recipe_file(class);
        let applied = thresholds_for_run(Some(recipe), &path, stamp, spec.method, &spec.settings, args.threshold, args.force)?;
        if let Some(warning) = &applied.warning {
            eprintln!("warning: {warning}");
        }
        let how = match (&recipe.thresholds.image, args.threshold) {
            (_, Some(_)) => "--threshold on the command line".to_owned(),
            (Some(record), None) => format!("{}: {}", applied.source, record.describe()),
            (None, None) => applied.source.clone(),
        };
        let region = args.region_threshold.filter(|_| args.threshold.is_some()).or(applied.region);
        match applied.image {
            Some(image) => {
                decisions.insert(class.to_string(), Decision { image, region, how });
            }
            None if applied.region.is_some() => {
                eprintln!("note: the recipe of `{class}` has a region threshold but no OK/NG threshold: no verdicts for it");
            }
            None => {}
        }
    }
    Ok(decisions)
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
