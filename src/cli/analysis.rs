//! What `alfa detect` and `alfa watch` share: the options that say how images are
//! analysed and judged (with the classes' recipes), the batch they describe, the model
//! they load, and Ctrl-C.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::model_request;
use crate::batch::{self, BatchSpec, ClassSources, Decision, Existing, OverlayRange, Plan, Runner, Shard};
use crate::clip::{self, ModelFiles};
use crate::detect::baselines::BaselineOptions;
use crate::detect::colormap::Colormap;
use crate::detect::text_cache::default_cache_dir;
use crate::detect::{DetectSettings, Detector, MethodKind, RefsBackbone};
use crate::options::{DinoModelArg, ModelArgs};
use crate::recipe::{MethodRecipe, ModelStamp, OtherRecipe, Recipe, Recipes, thresholds_for_run};

#[derive(Args, Debug)]
pub struct AnalysisArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub dino: DinoModelArg,
    /// The method whose maps to write: ALFA, or a baseline to compare it with (the
    /// same files; the JSON record has what that method knows). Only alfa, winclip
    /// (WinCLIP+) and anomalydino (few-shot only) use reference images [default: the
    /// class recipe's, else alfa].
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
    /// Also print each image's record as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// OK/NG threshold on image scores for this run: an image scoring at or above it
    /// is NG (its verdict goes into the record, scores.csv and the overlay)
    /// [default: the class recipe's, when it was made with this model, method and
    /// settings; a recipe made with others is refused unless --threshold (or, for
    /// detect, --force)].
    #[arg(long, value_name = "VALUE")]
    pub threshold: Option<f32>,
    /// Region threshold on map values for this run: where the map is at or above it
    /// is outlined in the overlay [default: the class recipe's, as --threshold].
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

/// What [`AnalysisArgs::prepare`] found for the runner: the resolved model and the
/// method's options.
pub struct Prepared {
    files: ModelFiles,
    options: BaselineOptions,
    /// What the records name the model by: CLIP's weights, and DINOv2's when the run
    /// uses it (`--resume` refuses records of other weights).
    identity: String,
}

impl AnalysisArgs {
    /// The batch these options describe, writing into `out`, before the classes' recipes
    /// are read ([`Self::prepare`]); refuses what can be checked before the output
    /// folder is made.
    pub fn spec(&self, out: PathBuf, existing: Existing, shard: Option<Shard>) -> Result<BatchSpec> {
        let recipes = self.recipes.locate()?;
        if let Some(image) = self.threshold.filter(|t| !t.is_finite()) {
            bail!("--threshold {image} is not a number");
        }
        // A method given here is checked now; one from a recipe in `prepare`.
        if let Some(method) = self.method {
            self.check_method_options(method)?;
        }
        Ok(BatchSpec {
            method: self.method.unwrap_or(MethodKind::Alfa),
            class: self.class.clone(),
            sources: ClassSources {
                prompts_file: self.prompts.clone(),
                recipes,
                references: self.refs.clone(),
                shots: self.shots,
                seed: self.seed.unwrap_or(0),
                zero_shot: self.zero_shot,
            },
            settings: DetectSettings::default(),
            out,
            overlay_range: self.overlay_range,
            colormap: self.colormap,
            decisions: BTreeMap::new(),
            existing,
            shard,
        })
    }

    /// Completes `spec` for the run's `classes` from their recipes (a malformed one is
    /// named with its line): the method and settings not given here, then, with the
    /// model resolved (downloading if needed), each class's OK/NG decision. The records
    /// `plan` found finished must be this model's and settings'. `other` says what to do
    /// with the thresholds of a recipe made with another model, method or settings when
    /// --threshold does not replace them.
    pub fn prepare(&self, spec: &mut BatchSpec, plan: &Plan, classes: &[String], other: OtherRecipe) -> Result<Prepared> {
        let recipes = spec.sources.recipes.clone();
        let mut class_recipes = BTreeMap::new();
        for class in classes {
            crate::recipe::check_class_name(class).map_err(anyhow::Error::msg)?;
            if let Some(recipe) = recipes.read(class)? {
                class_recipes.insert(class.clone(), recipe);
            }
        }
        let from_recipes = shared_method(&class_recipes);
        if let Some((class, method)) = &from_recipes
            && (self.method.is_none() || !self.settings.all_given())
        {
            eprintln!("method and settings not given here are the recipe's of `{class}` ({})", recipes.recipe_file(class).display());
            spec.method = self.method.unwrap_or(method.name);
            spec.settings = method.settings();
            if self.shots.is_none() && spec.method == method.name {
                spec.sources.shots = method.shots;
                spec.sources.seed = method.seed.unwrap_or(0);
            }
        }
        self.settings.apply(&mut spec.settings);
        self.check_method_options(spec.method)?;
        let anovl_views = self.anovl_views.or_else(|| from_recipes.as_ref().and_then(|(_, m)| m.anovl_views).filter(|_| self.method.is_none()));
        let options = BaselineOptions::for_method(spec.method, anovl_views)?;
        // What can be checked without the model, before it is loaded; the scales against
        // its patch grid when it is.
        spec.settings.validate(usize::MAX)?;

        let files = model_request(&self.model)?.resolve()?;
        let mut identity = files.identity();
        if uses_dinov2(spec.method, &spec.settings) {
            let request = crate::dinov2::DinoRequest { model: self.dino.dino_model.clone(), observer: Some(super::download_bar()) };
            identity = format!("{identity} + {}", request.resolve()?.identity());
        }
        plan.check_resumable(spec.method, &identity, &spec.settings)?;
        let stamp = if class_recipes.is_empty() {
            None
        } else {
            let id = self.model.model.clone().unwrap_or_else(|| clip::DEFAULT_MODEL.to_owned());
            Some(ModelStamp::of(&files, &id, self.model.precision, default_cache_dir().as_deref())?)
        };
        spec.decisions = self.decisions(classes, &class_recipes, &recipes, stamp.as_ref(), spec, other)?;
        Ok(Prepared { files, options, identity })
    }

    /// Loads the model `prepare` resolved and makes the runner of `spec`.
    pub fn runner<'a>(&self, spec: &'a BatchSpec, prepared: Prepared) -> Result<Runner<'a>> {
        let Prepared { files, options, identity } = prepared;
        let clip = super::load_model_files(&self.model, &files)?;
        let detector = with_dinov2_if_used(
            Detector::new(clip, &files.identity(), default_cache_dir().as_deref()),
            spec.method,
            &spec.settings,
            &self.dino,
            self.model.cpu,
        )?;
        let analyser = batch::Analyser::new(spec.method, options, detector, spec.settings.clone(), spec.sources.clone())?;
        Ok(Runner::new(analyser, spec, identity, self.model.precision))
    }

    /// Options that `method` does not take are refused.
    fn check_method_options(&self, method: MethodKind) -> Result<()> {
        let few_shot_method = matches!(method, MethodKind::Alfa | MethodKind::Winclip | MethodKind::Anomalydino);
        if !few_shot_method && (self.refs.is_some() || self.shots.is_some()) {
            bail!("--method {} is zero-shot only: it takes no reference images (drop --refs / --shots)", method.name());
        }
        check_refs_backbone(method, self.settings.refs_backbone, self.zero_shot)?;
        BaselineOptions::for_method(method, self.anovl_views)?;
        Ok(())
    }

    /// Each class's OK/NG decision: `--threshold` (and `--region-threshold`) for all of
    /// them, else the class recipe's thresholds when it was made with this model, method
    /// and settings (another's as `other` says).
    fn decisions(
        &self,
        classes: &[String],
        class_recipes: &BTreeMap<String, Recipe>,
        recipes: &Recipes,
        stamp: Option<&ModelStamp>,
        spec: &BatchSpec,
        other: OtherRecipe,
    ) -> Result<BTreeMap<String, Decision>> {
        let by_hand = |image| Decision { image, region: self.region_threshold, how: "--threshold on the command line".into() };
        let mut decisions = BTreeMap::new();
        for class in classes {
            let Some(recipe) = class_recipes.get(class) else {
                if let Some(image) = self.threshold {
                    decisions.insert(class.clone(), by_hand(image));
                }
                continue;
            };
            let stamp = stamp.expect("computed where a class has a recipe");
            let path = recipes.recipe_file(class);
            let applied = thresholds_for_run(Some(recipe), &path, stamp, spec.method, &spec.settings, self.threshold, other)?;
            if let Some(warning) = &applied.warning {
                eprintln!("warning: {warning}");
            }
            let how = match (&recipe.thresholds.image, self.threshold) {
                (_, Some(_)) => "--threshold on the command line".to_owned(),
                (Some(record), None) => format!("{}: {}", applied.source, record.describe()),
                (None, None) => applied.source.clone(),
            };
            let region = self.region_threshold.filter(|_| self.threshold.is_some()).or(applied.region);
            match applied.image {
                Some(image) => {
                    decisions.insert(class.clone(), Decision { image, region, how });
                }
                None if applied.region.is_some() => {
                    eprintln!("note: the recipe of `{class}` has a region threshold but no OK/NG threshold: no verdicts for it");
                }
                None => {}
            }
        }
        Ok(decisions)
    }
}

/// `--refs-backbone` is ALFA's few-shot bank: refused where it would do nothing.
pub(crate) fn check_refs_backbone(method: MethodKind, backbone: Option<RefsBackbone>, zero_shot: bool) -> Result<()> {
    match backbone {
        Some(RefsBackbone::Dinov2) if zero_shot => {
            bail!("--refs-backbone dinov2 is a few-shot bank of reference images; --zero-shot uses none")
        }
        Some(b) if method != MethodKind::Alfa => {
            bail!("--refs-backbone {} chooses ALFA's few-shot bank, not --method {}'s", b.name(), method.name())
        }
        _ => Ok(()),
    }
}

/// `detector` with DINOv2 (`--dino-model`, loaded now: downloaded if needed) when
/// `method` or `settings` use it.
pub(crate) fn with_dinov2_if_used(
    detector: Detector,
    method: MethodKind,
    settings: &DetectSettings,
    dino: &DinoModelArg,
    cpu: bool,
) -> Result<Detector> {
    if uses_dinov2(method, settings) {
        let model = super::load_dinov2(dino.dino_model.as_deref(), cpu)?;
        Ok(detector.with_dinov2(Arc::new(model)))
    } else {
        Ok(detector)
    }
}

/// Whether `method` with `settings` needs DINOv2 (AnomalyDINO, or a DINOv2 bank).
fn uses_dinov2(method: MethodKind, settings: &DetectSettings) -> bool {
    method == MethodKind::Anomalydino || settings.refs_backbone == RefsBackbone::Dinov2
}

/// The method and settings of the run's classes' recipes, when they all have the same
/// (with the first class that has them, for the message).
fn shared_method(recipes: &BTreeMap<String, Recipe>) -> Option<(String, MethodRecipe)> {
    let mut methods = recipes.iter().filter_map(|(class, r)| r.method.clone().map(|m| (class.clone(), m)));
    let first = methods.next()?;
    methods.all(|(_, m)| m == first.1).then_some(first)
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
