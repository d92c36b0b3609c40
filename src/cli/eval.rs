//! `alfa eval`: a method (or maps saved by any tool) over a dataset's test split,
//! with the paper's metrics per class and the mean.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::progress_label;
use crate::batch::shard::{Shard, run_file_name};
use crate::options::{DinoModelArg, ModelArgs};
use crate::clip;
use crate::detect::baselines::{BaselineOptions, ImageViews, build_method_with};
use crate::detect::references::draw;
use crate::detect::text_cache::default_cache_dir;
use crate::detect::{Ablation, AlfaMethod, ClassSpec, DetectSettings, Detector, Method, MethodKind, RefsBackbone, WindowMode};
use crate::eval::report::EvalReport;
use crate::eval::maps::map_path;
use crate::eval::{ClassMetrics, Dataset, DatasetKind, SavedMaps, evaluate_class, score_class_maps};
use crate::files::write_atomic;
use crate::prompts::PromptStore;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub dino: DinoModelArg,
    /// Dataset layout: mvtec, visa or folder [default: detected from ROOT].
    #[arg(long, value_name = "KIND")]
    pub dataset: Option<DatasetKind>,
    /// The dataset's root folder.
    #[arg(long, value_name = "ROOT")]
    pub root: PathBuf,
    /// Classes to evaluate [default: all]. The folder layout has one class, named after
    /// its folder unless given here (`--class bottle`): the name picks the prompt set.
    #[arg(long, visible_alias = "class", value_delimiter = ',', value_name = "A,B")]
    pub classes: Vec<String>,
    #[arg(long, value_enum, default_value_t = MethodKind::Alfa)]
    pub method: MethodKind,
    /// ALFA only: a row of the paper's component analysis (Table 2).
    #[arg(long, value_enum, default_value_t = Ablation::Full)]
    pub ablation: Ablation,
    /// Few-shot: normal references per class, drawn from the train split's good images
    /// (alfa, winclip, anomalydino; AnomalyDINO's protocol: K in 1, 2, 4, 8, 16).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub shots: usize,
    /// Few-shot, and AnoVL's test-time noise (anovl-tta): repeat with seeds 0..N (the
    /// references drawn, the noise) and report the mean and standard deviation
    /// [default: 5 with --shots, 1 for anovl-tta].
    #[arg(long, value_name = "N")]
    pub seeds: Option<u64>,
    /// Score the float32 TIFF maps in DIR (<class>/test/<defect>/<stem>.tiff, image score
    /// from a scores.csv beside them, else the map maximum) instead of running a method.
    #[arg(long, value_name = "DIR")]
    pub maps: Option<PathBuf>,
    /// Also write each test image's map and image score under DIR, in the layout
    /// `--maps DIR` scores (maps as float32 TIFFs, scores in DIR/<class>/scores.csv).
    #[arg(long, value_name = "DIR", conflicts_with = "maps")]
    pub save_maps: Option<PathBuf>,
    /// Analyse part I of N of each class's test images (every N-th in map-path order)
    /// and save its maps (needs --save-maps; the shards' scores go to
    /// scores-shard-I-of-N.csv, so N machines can share one folder). A part has no
    /// metrics of its own: once every shard is done, `alfa eval --maps DIR` scores the
    /// dataset, exactly as one unsharded run.
    #[arg(long, value_name = "I/N", requires = "save_maps", conflicts_with_all = ["json", "markdown", "csv"])]
    pub shard: Option<Shard>,
    /// A class's recipe with a prompts.toml gives its prompt set; other classes use the
    /// shipped sets.
    #[command(flatten)]
    pub recipes: super::recipe::RecipesArg,
    #[arg(long, value_delimiter = ',', default_value = "2,3", value_name = "S,...")]
    pub scales: Vec<usize>,
    #[arg(long, value_enum, default_value_t = WindowMode::Tokens)]
    pub window_mode: WindowMode,
    /// Features of ALFA's few-shot memory bank (with --shots): clip windows, or dinov2
    /// patches (AnomalyDINO's, fused with ALFA; see --dino-model).
    #[arg(long, value_enum, value_name = "B")]
    pub refs_backbone: Option<RefsBackbone>,
    /// AnoVL only (anovl-tfa, anovl-tta): the views its image score averages, 1 (the
    /// input alone, as its paper) or 22 (its public code's views: rotations,
    /// translations, flip, grey) [default: 1].
    #[arg(long, value_name = "N")]
    pub anovl_views: Option<usize>,
    /// Write the report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the table as Markdown.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write the table as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

/// `--anovl-views`, checked against the method before any work.
fn anovl_views(args: &EvalArgs) -> Result<ImageViews> {
    let Some(count) = args.anovl_views else { return Ok(ImageViews::default()) };
    if args.maps.is_some() {
        bail!("--anovl-views sets how AnoVL scores images; it does nothing with --maps");
    }
    Ok(BaselineOptions::for_method(args.method, Some(count))?.anovl_views)
}

pub fn run(args: EvalArgs) -> Result<()> {
    let views = anovl_views(&args)?;
    let mut dataset = match args.dataset {
        Some(kind) => Dataset::open_as(&args.root, kind)?,
        None => Dataset::open(&args.root)?,
    };
    if dataset.kind() == DatasetKind::Folder && !args.classes.is_empty() {
        match args.classes.as_slice() {
            [class] => dataset.name_folder_class(class)?,
            many => bail!("a folder dataset holds one class; pass one --class, not {}", many.join(", ")),
        }
    }
    let classes: Vec<String> = if args.classes.is_empty() { dataset.classes().to_vec() } else { args.classes.clone() };
    let mut samples = classes.iter().map(|c| dataset.test_samples(c)).collect::<Result<Vec<_>, _>>()?;
    if let Some(shard) = args.shard {
        samples = samples
            .into_iter()
            .zip(&classes)
            .map(|(class_samples, class)| shard.select(class_samples, |s| map_path(Path::new(""), class, s)))
            .collect();
    }
    let settings = DetectSettings {
        scales: args.scales.clone(),
        window_mode: args.window_mode,
        refs_backbone: args.refs_backbone.unwrap_or_default(),
        ..Default::default()
    };
    settings.validate(usize::MAX)?;
    let mut run = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "alfa": env!("CARGO_PKG_VERSION"),
        "dataset": format!("{:?}", dataset.kind()).to_lowercase(),
        "root": args.root.display().to_string(),
        "classes": classes,
    });

    let per_seed: Vec<Vec<ClassMetrics>> = if let Some(maps) = &args.maps {
        run["maps"] = maps.display().to_string().into();
        let metrics = classes.iter().map(|c| score_class_maps(&dataset, c, maps)).collect::<Result<Vec<_>, _>>()?;
        vec![metrics]
    } else {
        if args.shots > 0 && !matches!(args.method, MethodKind::Alfa | MethodKind::Winclip | MethodKind::Anomalydino) {
            bail!("--shots works with --method alfa, winclip or anomalydino; {:?} is zero-shot only", args.method);
        }
        super::analysis::check_refs_backbone(args.method, args.refs_backbone, false)?;
        let needs_references = args.method == MethodKind::Anomalydino || settings.refs_backbone == RefsBackbone::Dinov2;
        if needs_references && args.shots == 0 {
            bail!("--method anomalydino and --refs-backbone dinov2 compare with normal reference images: give --shots K (1, 2, 4, 8 or 16)");
        }
        let files = super::model_request(&args.model)?.resolve()?;
        let identity = files.identity();
        let clip = super::load_model_files(&args.model, &files)?;
        settings.validate(clip.model.vision.grid())?;
        let detector = super::analysis::with_dinov2_if_used(
            Detector::new(clip, &identity, default_cache_dir().as_deref()),
            args.method,
            &settings,
            &args.dino,
            args.model.cpu,
        )?;
        let dinov2_name = detector.dinov2().map(|d| d.files.name.clone());
        let mut method: Box<dyn Method> = match args.method {
            MethodKind::Alfa => Box::new(AlfaMethod::new(detector, settings.clone(), args.ablation)),
            kind => build_method_with(kind, detector, settings.clone(), BaselineOptions { anovl_views: views })?,
        };
        run["method"] = serde_json::to_value(args.method)?;
        run["ablation"] = serde_json::to_value(args.ablation)?;
        run["model"] = files.name.clone().into();
        run["model_identity"] = identity.into();
        if let Some(dino) = dinov2_name {
            run["dinov2"] = dino.into();
        }
        run["precision"] = args.model.precision.name().into();
        run["settings"] = serde_json::to_value(&settings)?;
        run["shots"] = args.shots.into();
        if matches!(args.method, MethodKind::AnovlTfa | MethodKind::AnovlTta) {
            run["anovl_views"] = views.count().into();
        }
        let seed_count = match (args.shots > 0, args.method == MethodKind::AnovlTta) {
            (true, _) => args.seeds.unwrap_or(5),
            (false, true) => args.seeds.unwrap_or(1),
            (false, false) => 1,
        };
        let seeds: Vec<u64> = (0..seed_count.max(1)).collect();
        run["seeds"] = serde_json::to_value(&seeds)?;
        let mut saved = match &args.save_maps {
            Some(_) if seeds.len() > 1 => {
                bail!("--save-maps keeps one set of maps, and this run has {} seeds: pass --seeds 1", seeds.len())
            }
            Some(dir) => Some(SavedMaps::new(dir, run_file_name(args.shard, "scores", "csv"), &classes)?),
            None => None,
        };

        // Resolved once, and said: a class that silently got the generic set scores low.
        let store = PromptStore::in_recipes(&args.recipes.locate()?);
        let mut specs = Vec::new();
        let mut prompt_sets = serde_json::Map::new();
        for class in &classes {
            let resolved = store.resolve(class)?;
            eprintln!("class {class}: {}", resolved.origin());
            prompt_sets.insert(class.clone(), resolved.origin().into());
            let set = resolved.set;
            specs.push(ClassSpec { id: class.clone(), name: set.class.name.clone(), prompts: set.expand() });
        }
        run["prompt_sets"] = prompt_sets.into();

        let total: usize = samples.iter().map(Vec::len).sum::<usize>() * seeds.len();
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images ({eta} left) {wide_msg}").expect("the template is valid"),
        );
        let mut per_seed = Vec::new();
        for &seed in &seeds {
            method.reseed(seed);
            let mut metrics = Vec::new();
            for ((class, samples), spec) in classes.iter().zip(&samples).zip(&specs) {
                bar.set_message(format!("{class}, seed {seed}"));
                let references = if args.shots > 0 {
                    let pool = dataset.train_good(class)?;
                    if pool.len() < args.shots {
                        bail!("class `{class}` has {} good training images, fewer than --shots {}", pool.len(), args.shots);
                    }
                    draw(&pool, args.shots, seed).iter().map(|p| clip::open_image(p)).collect::<Result<Vec<_>, _>>()?
                } else {
                    Vec::new()
                };
                method.prepare(spec, &references)?;
                let mut score = |sample: &crate::eval::Sample| {
                    bar.set_message(format!("{class}, seed {seed}: {}", progress_label(&sample.image)));
                    let image = clip::open_image(&sample.image).map_err(crate::detect::DetectError::from)?;
                    let scored = method.score(&image)?;
                    if let Some(saved) = saved.as_mut() {
                        saved.save(class, sample, scored.image_score, &scored.map)?;
                    }
                    bar.inc(1);
                    Ok((scored.image_score, scored.map))
                };
                if args.shard.is_some() {
                    for sample in samples {
                        score(sample).with_context(|| format!("class `{class}`"))?;
                    }
                } else {
                    metrics.push(evaluate_class(class, samples, score).with_context(|| format!("class `{class}`"))?);
                }
            }
            per_seed.push(metrics);
        }
        bar.finish_and_clear();
        if let (Some(saved), Some(dir)) = (saved, &args.save_maps) {
            let count = saved.finish()?;
            eprintln!("saved {count} maps and their scores under {}", dir.display());
        }
        if let Some(shard) = args.shard {
            eprintln!("shard {shard} done: once every shard is, `alfa eval --maps {}` scores the dataset", args.save_maps.as_deref().unwrap_or(Path::new("DIR")).display());
            return Ok(());
        }
        per_seed
    };

    let report = EvalReport::new(run, &per_seed);
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        write_atomic(path, markdown.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        write_atomic(path, report.csv().as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
