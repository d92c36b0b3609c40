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
use crate::clip::{self, Clip, Precision};
use crate::detect::colormap::Colormap;
use crate::detect::export::{self, OverlayStyle};
use crate::detect::inputs::{self, InputImage};
use crate::detect::references::{ReferenceBank, draw, list_references, references_dir};
use crate::detect::text_cache::default_cache_dir;
use crate::detect::{ClassPrompts, DetectSettings, Detection, Detector, WindowMode};
use crate::prompts::{PromptStore, ResolvedPrompts};

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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

#[derive(Serialize)]
struct Record<'a> {
    file: String,
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
    detection: &'a Detection,
}

pub fn run(args: DetectArgs) -> Result<()> {
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
    let clip = Clip::load(&files, &clip::device(args.model.cpu)?, args.model.precision)?;
    settings.validate(clip.model.vision.grid())?;
    let mut detector = Detector::new(clip, &identity, default_cache_dir().as_deref());

    let mut prompt_sets: HashMap<String, (ResolvedPrompts, ClassPrompts, Option<ReferenceBank>)> = HashMap::new();
    let store = PromptStore {
        dir: Some(args.prompts_dir.clone()),
    };
    let bar = progress_bar(images.len());
    let mut scores = BTreeMap::new();
    let mut failures = 0;
    for ((image, class), outputs) in images.iter().zip(&classes).zip(&outputs) {
        bar.set_message(progress_label(&image.path));
        if !prompt_sets.contains_key(class) {
            let resolved = match &args.prompts {
                Some(file) => PromptStore::from_file(file)?,
                None => store.resolve(class)?,
            };
            if resolved.generic_fallback {
                bar.suspend(|| {
                    eprintln!(
                        "note: no prompt set for class `{class}`: using the generic set \
                         (add {} to give it its own)",
                        args.prompts_dir.join(format!("{class}.toml")).display()
                    )
                });
            }
            let encoded = detector.encode_class(resolved.set.expand())?;
            let bank = bar.suspend(|| reference_bank(&detector, &args, class, &settings))?;
            prompt_sets.insert(class.clone(), (resolved, encoded, bank));
        }
        let (resolved, class_prompts, bank) = &prompt_sets[class];
        let result = detect_one(&detector, image, class_prompts, bank.as_ref(), &settings, &args, outputs).and_then(|detection| {
            let record = Record {
                file: image.path.display().to_string(),
                class,
                map: outputs.map.display().to_string(),
                overlay: outputs.overlay.display().to_string(),
                prompt_set: resolved.path.as_ref().map_or("shipped".into(), |p| p.display().to_string()),
                generic_fallback: resolved.generic_fallback,
                model: &identity,
                precision: args.model.precision,
                settings: &settings,
                detection: &detection,
            };
            let json = serde_json::to_string(&record)?;
            export::write_atomic(&outputs.record, json.as_bytes())?;
            if args.json {
                bar.suspend(|| -> Result<()> {
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{json}").context("cannot write to stdout")
                })?;
            }
            Ok(detection.image_score)
        });
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

fn detect_one(
    detector: &Detector,
    image: &InputImage,
    class: &ClassPrompts,
    references: Option<&ReferenceBank>,
    settings: &DetectSettings,
    args: &DetectArgs,
    outputs: &Outputs,
) -> Result<Detection> {
    let decoded = clip::open_image(&image.path)?;
    let detection = detector.detect_with_references(&decoded, class, references, settings)?;
    export::write_map_tiff(&outputs.map, &detection.map)?;
    let range = match args.overlay_range {
        OverlayRange::Fixed(lo, hi) => (lo, hi),
        OverlayRange::PerImage => {
            let lo = detection.map.values.iter().copied().fold(f32::INFINITY, f32::min);
            (lo, detection.map.max().max(lo + f32::EPSILON))
        }
    };
    // An overlay seen on its own still says which image and score it shows.
    let style = OverlayStyle {
        range,
        colormap: args.colormap,
        caption: vec![image.output_stem.display().to_string(), format!("image score {:.3}", detection.image_score)],
        ..Default::default()
    };
    export::write_png(&outputs.overlay, &export::render_overlay(&decoded, &detection.map, &style)?)?;
    Ok(detection)
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
