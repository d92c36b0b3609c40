//! `alfa detect`: anomaly maps, overlays and JSON records for images and folders.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{ModelArgs, progress_label};
use crate::clip::{self, Precision};
use crate::detect::colormap::Colormap;
use crate::detect::export::{self, OverlayStyle};
use crate::detect::inputs::{self, InputImage};
use crate::detect::references::{ReferenceBank, draw, list_references, references_dir};
use crate::detect::text_cache::default_cache_dir;
use crate::detect::baselines::{BaselineOptions, build_method_with};
use crate::detect::maps::Grid;
use crate::detect::{ClassPrompts, ClassSpec, DetectSettings, Detection, Detector, Method, MethodKind, WindowMode};
use crate::prompts::{PromptStore, ResolvedPrompts};

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
    #[arg(long)]
    pub force: bool,
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

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OverlayRange {
    Fixed(f32, f32),
    PerImage,
}

impl FromStr for OverlayRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::PerImage);
        }
        let parsed = s.split_once(',').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((lo, hi)) if lo < hi => Ok(Self::Fixed(lo, hi)),
            _ => Err(format!("`{s}` is not `MIN,MAX` with MIN < MAX, or `auto`")),
        }
    }
}

/// The outputs of one image.
struct Outputs {
    map: PathBuf,
    overlay: PathBuf,
    record: PathBuf,
}

impl Outputs {
    fn of(out: &Path, image: &InputImage) -> Self {
        let with_suffix = |suffix: &str| {
            let mut name = image.output_stem.as_os_str().to_owned();
            name.push(suffix);
            out.join(name)
        };
        Self {
            map: with_suffix(".tiff"),
            overlay: with_suffix("_overlay.png"),
            record: with_suffix(".json"),
        }
    }

    fn all(&self) -> [&Path; 3] {
        [&self.map, &self.overlay, &self.record]
    }
}

/// What a record says about the image: ALFA's whole detection (scores, prompts,
/// descriptors, few-shot), or a baseline's image score.
#[derive(Serialize)]
#[serde(untagged)]
enum Findings<'a> {
    Alfa(&'a Detection),
    Baseline { image_score: f32 },
}

/// One image's result, whichever method made it.
struct Outcome {
    image_score: f32,
    map: Grid,
    detection: Option<Detection>,
}

impl Outcome {
    fn findings(&self) -> Findings<'_> {
        match &self.detection {
            Some(detection) => Findings::Alfa(detection),
            None => Findings::Baseline { image_score: self.image_score },
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    file: String,
    method: MethodKind,
    class: &'a str,
    map: String,
    overlay: String,
    /// The prompt-set file used, or `shipped` for the built-in set.
    prompt_set: String,
    /// The class has no prompt set of its own; the generic set was used.
    generic_fallback: bool,
    model: &'a str,
    /// The image tower's number format.
    precision: Precision,
    settings: &'a DetectSettings,
    #[serde(flatten)]
    findings: Findings<'a>,
}

/// The method that analyses the images, with what it has prepared per class.
enum Analyser {
    Alfa {
        detector: Detector,
        prompt_sets: HashMap<String, (ClassPrompts, Option<ReferenceBank>)>,
    },
    Baseline {
        method: Box<dyn Method>,
        /// The class `method` is prepared for.
        prepared: Option<String>,
    },
}

pub fn run(args: DetectArgs) -> Result<()> {
    let few_shot_method = matches!(args.method, MethodKind::Alfa | MethodKind::Winclip);
    if !few_shot_method && (args.refs.is_some() || args.shots.is_some()) {
        bail!("--method {} is zero-shot only: it takes no reference images (drop --refs / --shots)", args.method.name());
    }
    let options = BaselineOptions::for_method(args.method, args.anovl_views)?;
    let images = inputs::collect(&args.inputs)?;
    let classes: Vec<String> = images
        .iter()
        .map(|image| {
            args.class.clone().or_else(|| image.class.clone()).with_context(|| {
                format!(
                    "no class for {}: pass --class NAME (the images are not in an MVTec AD layout that names it)",
                    image.path.display()
                )
            })
        })
        .collect::<Result<_>>()?;
    prepare_output_folder(&args.out)?;
    let outputs: Vec<Outputs> = images.iter().map(|i| Outputs::of(&args.out, i)).collect();
    if !args.force {
        let existing: Vec<&Path> = outputs.iter().flat_map(|o| o.all()).filter(|p| p.exists()).collect();
        if let Some(first) = existing.first() {
            bail!(
                "{} output file(s) already exist in {}, e.g. {}: pass --force to overwrite them, or choose another --out",
                existing.len(),
                args.out.display(),
                first.display()
            );
        }
    }
    let settings = DetectSettings {
        scales: args.scales.clone(),
        window_mode: args.window_mode,
        sigma: args.sigma,
        ..Default::default()
    };
    // What can be checked without the model, before it is loaded; the scales against
    // its patch grid right after.
    settings.validate(usize::MAX)?;

    let files = args.model.request().resolve()?;
    let identity = files.identity();
    let clip = args.model.load_files(&files)?;
    settings.validate(clip.model.vision.grid())?;
    let detector = Detector::new(clip, &identity, default_cache_dir().as_deref());
    let mut analyser = match args.method {
        MethodKind::Alfa => Analyser::Alfa { detector, prompt_sets: HashMap::new() },
        kind => Analyser::Baseline { method: build_method_with(kind, detector, settings.clone(), options)?, prepared: None },
    };

    let mut resolved_sets: HashMap<String, ResolvedPrompts> = HashMap::new();
    let store = PromptStore {
        dir: Some(args.prompts_dir.clone()),
    };
    let bar = progress_bar(images.len());
    let mut scores = BTreeMap::new();
    let mut failures = 0;
    for ((image, class), outputs) in images.iter().zip(&classes).zip(&outputs) {
        bar.set_message(progress_label(&image.path));
        if !resolved_sets.contains_key(class) {
            let resolved = match &args.prompts {
                Some(file) => PromptStore::from_file(file)?,
                None => store.resolve(class)?,
            };
            if resolved.generic_fallback && args.method == MethodKind::Alfa {
                bar.suspend(|| {
                    eprintln!(
                        "note: no prompt set for class `{class}`: using the generic set \
                         (add {} to give it its own)",
                        args.prompts_dir.join(format!("{class}.toml")).display()
                    )
                });
            }
            resolved_sets.insert(class.clone(), resolved);
        }
        let resolved = &resolved_sets[class];
        prepare(&mut analyser, resolved, class, &args, &settings, &bar)?;
        let result = (|| -> Result<f32> {
            let decoded = clip::open_image(&image.path)?;
            let outcome = analyse(&mut analyser, &decoded, class, &settings)?;
            write_image_outputs(image, &decoded, &outcome, &args, outputs)?;
            let record = Record {
                file: image.path.display().to_string(),
                method: args.method,
                class,
                map: outputs.map.display().to_string(),
                overlay: outputs.overlay.display().to_string(),
                prompt_set: resolved.path.as_ref().map_or("shipped".into(), |p| p.display().to_string()),
                generic_fallback: resolved.generic_fallback,
                model: &identity,
                precision: args.model.precision,
                settings: &settings,
                findings: outcome.findings(),
            };
            let json = serde_json::to_string(&record)?;
            export::write_atomic(&outputs.record, json.as_bytes())?;
            if args.json {
                bar.suspend(|| -> Result<()> {
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{json}").context("cannot write to stdout")
                })?;
            }
            Ok(outcome.image_score)
        })();
        match result {
            Ok(score) => {
                let relative = outputs.map.strip_prefix(&args.out).unwrap_or(&outputs.map);
                scores.insert(relative.display().to_string(), score);
            }
            Err(e) => {
                failures += 1;
                bar.suspend(|| eprintln!("error: {}: {e:#}", image.path.display()));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if !scores.is_empty() {
        merge_scores(&args.out.join("scores.csv"), scores)?;
    }
    if failures > 0 {
        bail!("{failures} of {} image(s) failed (reasons above); the others were written to {}", images.len(), args.out.display());
    }
    Ok(())
}

/// Creates `out` and checks that files can be written in it, so that a wrong `--out`
/// is refused before the model is downloaded and loaded, not after every image failed.
fn prepare_output_folder(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file, not a folder: pass a folder (it is created if needed)", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create the output folder --out {}", out.display()))?;
    tempfile::NamedTempFile::new_in(out).with_context(|| format!("cannot write into the output folder --out {}", out.display()))?;
    Ok(())
}

/// The class's few-shot bank, or `None` (zero-shot), saying which on stderr.
fn reference_bank(detector: &Detector, args: &DetectArgs, class: &str, settings: &DetectSettings) -> Result<Option<ReferenceBank>> {
    if args.zero_shot {
        return Ok(None);
    }
    let dir = args.refs.clone().unwrap_or_else(|| references_dir(&args.prompts_dir, class));
    let mut files = list_references(&dir)?;
    if args.refs.is_some() && files.is_empty() {
        bail!("no reference images in {}", dir.display());
    }
    if let Some(shots) = args.shots {
        files = draw(&files, shots, args.seed);
    }
    if files.is_empty() {
        eprintln!(
            "zero-shot for `{class}`: no reference images (add normal images with `alfa refs add --class {class} IMAGE...`)"
        );
        return Ok(None);
    }
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} reference images").expect("the template is valid"));
    let build = detector.build_reference_bank(&files, settings, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    for (file, reason) in &build.skipped {
        eprintln!("warning: skipped reference {}: {reason}", file.display());
    }
    match build.bank {
        Some(bank) => {
            eprintln!("few-shot for `{class}`: {} reference image(s) from {}", bank.files.len(), dir.display());
            Ok(Some(bank))
        }
        None => {
            eprintln!("zero-shot for `{class}`: none of the reference images in {} could be read", dir.display());
            Ok(None)
        }
    }
}

/// Prepares `analyser` for `class` when it is not yet: ALFA encodes the class's
/// prompts and builds its bank once per class; a baseline is prepared again when the
/// class changes (its own prompts; WinCLIP+ with the references).
fn prepare(
    analyser: &mut Analyser,
    resolved: &ResolvedPrompts,
    class: &str,
    args: &DetectArgs,
    settings: &DetectSettings,
    bar: &ProgressBar,
) -> Result<()> {
    match analyser {
        Analyser::Alfa { detector, prompt_sets } => {
            if !prompt_sets.contains_key(class) {
                let encoded = detector.encode_class(resolved.set.expand())?;
                let bank = bar.suspend(|| reference_bank(detector, args, class, settings))?;
                prompt_sets.insert(class.to_owned(), (encoded, bank));
            }
        }
        Analyser::Baseline { method, prepared } => {
            if prepared.as_deref() != Some(class) {
                let spec = ClassSpec { id: class.to_owned(), name: resolved.set.class.name.clone(), prompts: resolved.set.expand() };
                let references = bar.suspend(|| baseline_references(method.kind(), args, class))?;
                method.prepare(&spec, &references)?;
                *prepared = Some(class.to_owned());
            }
        }
    }
    Ok(())
}

/// WinCLIP+'s reference images (decoded), or none; zero-shot baselines say that the
/// class's references are not used.
fn baseline_references(kind: MethodKind, args: &DetectArgs, class: &str) -> Result<Vec<image::DynamicImage>> {
    if args.zero_shot {
        return Ok(Vec::new());
    }
    let dir = args.refs.clone().unwrap_or_else(|| references_dir(&args.prompts_dir, class));
    let mut files = list_references(&dir)?;
    if kind != MethodKind::Winclip {
        if !files.is_empty() {
            eprintln!("note: --method {} is zero-shot only: the {} reference image(s) of `{class}` are not used", kind.name(), files.len());
        }
        return Ok(Vec::new());
    }
    if args.refs.is_some() && files.is_empty() {
        bail!("no reference images in {}", dir.display());
    }
    if let Some(shots) = args.shots {
        files = draw(&files, shots, args.seed);
    }
    let mut images = Vec::with_capacity(files.len());
    for file in &files {
        match clip::open_image(file) {
            Ok(image) => images.push(image),
            Err(e) => eprintln!("warning: skipped reference {}: {e}", file.display()),
        }
    }
    if images.is_empty() {
        eprintln!("zero-shot for `{class}`: no reference images");
    } else {
        eprintln!("few-shot (WinCLIP+) for `{class}`: {} reference image(s) from {}", images.len(), dir.display());
    }
    Ok(images)
}

/// One image through the prepared method.
fn analyse(analyser: &mut Analyser, decoded: &image::DynamicImage, class: &str, settings: &DetectSettings) -> Result<Outcome> {
    Ok(match analyser {
        Analyser::Alfa { detector, prompt_sets } => {
            let (class_prompts, bank) = &prompt_sets[class];
            let mut detection = detector.detect_with_references(decoded, class_prompts, bank.as_ref(), settings)?;
            let map = std::mem::replace(&mut detection.map, Grid::new(0, 0, Vec::new()));
            Outcome { image_score: detection.image_score, map, detection: Some(detection) }
        }
        Analyser::Baseline { method, .. } => {
            let scored = method.score(decoded)?;
            Outcome { image_score: scored.image_score, map: scored.map, detection: None }
        }
    })
}

/// The map as float32 TIFF and the overlay, whose caption names the image and score.
fn write_image_outputs(
    image: &InputImage,
    decoded: &image::DynamicImage,
    outcome: &Outcome,
    args: &DetectArgs,
    outputs: &Outputs,
) -> Result<()> {
    let map = &outcome.map;
    export::write_map_tiff(&outputs.map, map)?;
    let range = match args.overlay_range {
        OverlayRange::Fixed(lo, hi) => (lo, hi),
        OverlayRange::PerImage => {
            let lo = map.values.iter().copied().fold(f32::INFINITY, f32::min);
            (lo, map.max().max(lo + f32::EPSILON))
        }
    };
    // An overlay seen on its own still says which image, method and score it shows.
    let style = OverlayStyle {
        range,
        colormap: args.colormap,
        caption: vec![
            image.output_stem.display().to_string(),
            format!("{} image score {:.3}", args.method.name(), outcome.image_score),
        ],
        ..Default::default()
    };
    export::write_png(&outputs.overlay, &export::render_overlay(decoded, map, &style)?)?;
    Ok(())
}

fn progress_bar(len: usize) -> ProgressBar {
    if len < 2 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images ({eta} left) {wide_msg}")
            .expect("the template is valid"),
    );
    bar
}

/// `scores.csv` (`path,score`, paths relative to the output folder, as `alfa eval
/// --maps` reads them): this run's rows replace rows for the same maps, others stay.
fn merge_scores(path: &Path, new: BTreeMap<String, f32>) -> Result<()> {
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines().skip(1) {
            if let Some((p, s)) = line.rsplit_once(',') {
                rows.insert(p.to_owned(), s.to_owned());
            }
        }
    }
    rows.extend(new.into_iter().map(|(p, s)| (p, s.to_string())));
    let mut csv = String::from("path,score\n");
    for (p, s) in rows {
        csv.push_str(&format!("{p},{s}\n"));
    }
    export::write_atomic(path, csv.as_bytes())?;
    Ok(())
}
