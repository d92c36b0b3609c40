//! `alfa threshold`: a class's thresholds, fitted on good images (the app's code) or
//! set by hand, stored in its recipe with the model, method and settings they hold for.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::options::ModelArgs;
use super::recipe::{RecipesArg, ensure_writable};
use crate::clip;
use crate::detect::text_cache::default_cache_dir;
use crate::detect::threshold::{describe_sources, fit_thresholds};
use crate::batch::{Analyser, ClassSources, Observer};
use crate::detect::baselines::BaselineOptions;
use crate::detect::{DetectSettings, Detector, MethodKind};
use crate::recipe::{MethodRecipe, ModelStamp, Recipe, ThresholdRecord};

#[derive(Args, Debug)]
pub struct ThresholdArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub recipes: RecipesArg,
    /// The class whose recipe gets the thresholds.
    #[arg(long)]
    pub class: String,
    /// Good images (files, or folders searched recursively): both thresholds are fitted
    /// on their scores, as the app's "Both from a folder of good images" does. A file
    /// that cannot be read is named and left out.
    #[arg(long, value_name = "IMAGE|DIR", num_args = 1.., required_unless_present_any = ["threshold", "region_threshold"])]
    pub good: Vec<PathBuf>,
    /// Target false-positive rate: with n good images, at most floor(FPR x n) of them
    /// score at or above the OK/NG threshold, and at most as many have any map value at
    /// or above the region threshold.
    #[arg(long, default_value_t = 0.01, value_name = "F")]
    pub fpr: f64,
    /// Set the OK/NG threshold (on image scores) by hand instead of fitting it.
    #[arg(long, value_name = "VALUE", conflicts_with = "good")]
    pub threshold: Option<f32>,
    /// Set the region threshold (on map values: outlines, masks) by hand.
    #[arg(long, value_name = "VALUE", conflicts_with = "good")]
    pub region_threshold: Option<f32>,
    /// The method the thresholds are for [default: the recipe's, else alfa]. Fitting on
    /// good images is ALFA's (as in the app); set a baseline's thresholds by hand.
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
    #[command(flatten)]
    pub settings: super::SettingsArgs,
    #[command(flatten)]
    pub dino: crate::options::DinoModelArg,
    /// Few-shot with K of the class's references, drawn with --seed [default: the
    /// recipe's, else all of them]; stored in the recipe so that `detect` draws the same.
    #[arg(long, value_name = "K")]
    pub shots: Option<usize>,
    /// Seed of the --shots draw.
    #[arg(long, requires = "shots")]
    pub seed: Option<u64>,
}

pub fn run(args: ThresholdArgs) -> Result<()> {
    let class = args.class.as_str();
    crate::recipe::check_class_name(class).map_err(anyhow::Error::msg)?;
    for value in [args.threshold, args.region_threshold].into_iter().flatten() {
        if !value.is_finite() {
            bail!("a threshold must be a finite number, not {value}");
        }
    }
    if !(0.0..1.0).contains(&args.fpr) {
        bail!("--fpr {} must be from 0 to below 1", args.fpr);
    }
    let recipes = args.recipes.locate()?;
    let existing = recipes.read(class)?;
    ensure_writable(&recipes, class)?;
    let mut recipe = existing.clone().unwrap_or_else(|| Recipe::new(class));
    let previous = existing.as_ref().and_then(|r| r.method.clone());
    let method = args.method.or(previous.as_ref().map(|m| m.name)).unwrap_or(MethodKind::Alfa);
    // The recipe's settings, unless the method changes, with what is given on top.
    let base = previous.as_ref().filter(|m| m.name == method);
    let mut settings = base.map_or_else(DetectSettings::default, MethodRecipe::settings);
    args.settings.apply(&mut settings);
    settings.validate(usize::MAX)?;
    super::analysis::check_refs_backbone(method, args.settings.refs_backbone, false)?;
    let mut method_recipe = MethodRecipe::new(method, &settings);
    method_recipe.shots = args.shots.or(base.and_then(|m| m.shots));
    method_recipe.seed = if args.shots.is_some() { args.seed.or(Some(0)) } else { base.and_then(|m| m.seed) };
    method_recipe.anovl_views = base.and_then(|m| m.anovl_views);
    if !args.good.is_empty() && method != MethodKind::Alfa {
        bail!(
            "thresholds are fitted on good images for ALFA (as in the app); set a baseline's by hand with --threshold / --region-threshold"
        );
    }

    let files = super::model_request(&args.model)?.resolve()?;
    let id = args.model.model.clone().unwrap_or_else(|| clip::DEFAULT_MODEL.to_owned());
    let stamp = ModelStamp::of(&files, &id, args.model.precision, default_cache_dir().as_deref())?;
    // Thresholds of another model or method do not hold for this one: the recipe is
    // now this one's, and what it held for the other is dropped (and said).
    if let Some(why) = recipe.mismatch(&stamp, method) {
        eprintln!("note: {why}: the recipe is now made with this model and method; thresholds not set now are dropped");
        recipe.thresholds = Default::default();
    }
    recipe.model = Some(stamp);
    recipe.method = Some(method_recipe.clone());

    if args.good.is_empty() {
        if let Some(value) = args.threshold {
            recipe.thresholds.image = Some(ThresholdRecord::by_hand(value));
        }
        if let Some(value) = args.region_threshold {
            recipe.thresholds.region = Some(ThresholdRecord::by_hand(value));
        }
        let path = recipes.write(&recipe)?;
        report(&recipe, &path);
        return Ok(());
    }

    let good: Vec<PathBuf> = super::refs::image_files(&args.good)?;
    let clip = super::load_model_files(&args.model, &files)?;
    let detector = super::analysis::with_dinov2_if_used(
        Detector::new(clip, &files.identity(), default_cache_dir().as_deref()),
        method,
        &settings,
        &args.dino,
        args.model.cpu,
    )?;
    // The class's prompts and references as `alfa detect` prepares them (the batch's
    // analyser), then the good images scored by the app's code.
    let sources = ClassSources {
        prompts_file: None,
        recipes: recipes.clone(),
        references: None,
        shots: method_recipe.shots,
        seed: method_recipe.seed.unwrap_or(0),
        zero_shot: false,
    };
    let mut analyser = Analyser::new(method, BaselineOptions::default(), detector, settings.clone(), sources)?;
    analyser.prepare(class, &Stderr)?;
    let bar = if good.len() < 2 { ProgressBar::hidden() } else { ProgressBar::new(good.len() as u64) };
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} good images ({eta} left)").expect("the template is valid"));
    let scored = analyser.score_good_images(class, &good, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    for (file, reason) in &scored.skipped {
        eprintln!("skipped (cannot be read): {}: {reason}", file.display());
    }
    let sources: Vec<&Path> = args.good.iter().map(PathBuf::as_path).collect();
    let fit = fit_thresholds(scored, args.fpr, &describe_sources(&sources))?;
    for warning in &fit.warnings {
        eprintln!("warning: {warning}");
    }
    let given: Vec<String> = args.good.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string()).collect();
    let n = fit.scores.len();
    recipe.thresholds.image = Some(ThresholdRecord::from_good_images(fit.image, fit.fpr, given.clone(), n));
    recipe.thresholds.region = Some(ThresholdRecord::from_good_images(fit.region, fit.fpr, given, n));
    let path = recipes.write(&recipe)?;
    report(&recipe, &path);
    Ok(())
}

/// The analyser's notes (few-shot or zero-shot, skipped references) on stderr.
struct Stderr;

impl Observer for Stderr {
    fn message(&self, text: &str) {
        eprintln!("{text}");
    }
}

fn report(recipe: &Recipe, path: &Path) {
    for (name, record) in [("OK/NG threshold", &recipe.thresholds.image), ("region threshold", &recipe.thresholds.region)] {
        if let Some(t) = record {
            println!("{name} {} {}", t.value, t.describe());
        }
    }
    println!("written to {}", path.display());
}
