//! Batches: images through one method into per-image files (map, overlay, record) with
//! an OK/NG verdict where the class has a threshold, then `scores.csv`, `summary.json`
//! and, when asked, `report.html`. A batch resumes where an earlier one stopped, stops
//! cleanly between images when asked to, and can take one shard of the images.
//! `alfa detect` and `alfa watch` run it; they differ in how they show progress
//! ([`Observer`]).

mod analyser;
pub mod outputs;
pub mod report;
pub mod shard;
mod summary;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use image::DynamicImage;
use serde::Serialize;

pub use analyser::{Analyser, ClassSources, Findings, Outcome};
pub use outputs::{OutputFolder, Outputs, ScoreRow, merge_scores, prepare_output_folder};
pub use shard::Shard;
pub use summary::{RunStatus, Summary};

use crate::clip::{self, Precision};
use crate::detect::colormap::Colormap;
use crate::detect::export::{self, OverlayStyle};
use crate::detect::inputs::{self, InputImage};
use crate::detect::threshold::Verdict;
use crate::detect::{DetectSettings, MethodKind, Partial};
use crate::files::write_atomic;
use crate::prompts::ResolvedPrompts;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write into the output folder {}: {reason} (choose another folder)", path.display())]
    Output { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// Writing an output failed in the file system.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Inputs(#[from] inputs::InputError),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    #[error(transparent)]
    Prompts(#[from] crate::prompts::PromptError),
    #[error(transparent)]
    Clip(#[from] crate::clip::ClipError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
}

impl BatchError {
    fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        BatchError::File { path: path.to_owned(), reason: e.to_string() }
    }

    fn write(path: &Path, source: std::io::Error) -> Self {
        BatchError::Write { path: path.to_owned(), source }
    }

    /// The file system's error when an output could not be written (a full disk, a
    /// read-only, unmounted or vanished output folder): every following image would
    /// fail the same way. `None` for errors of the image itself.
    pub fn output_io_error(&self) -> Option<&std::io::Error> {
        match self {
            BatchError::Write { source, .. } | BatchError::Export(export::ExportError::Io { source, .. }) => Some(source),
            _ => None,
        }
    }
}

/// What a batch tells its user as it goes.
pub trait Observer {
    /// A line for the user: `note: ...`, `warning: ...`, or a few-shot/zero-shot notice.
    fn message(&self, text: &str);
    /// Reference images of a class read so far, of `total`.
    fn references(&self, _done: usize, _total: usize) {}
    /// `image` is next.
    fn image_started(&self, _image: &InputImage) {}
    /// `image` is written (its record as one JSON line), or failed.
    fn image_finished(&self, _image: &InputImage, _result: &Result<String, String>) {}
    /// Whether [`Self::partial`] is wanted: partial maps cost a little extra work.
    fn wants_partials(&self) -> bool {
        false
    }
    /// What the engine knows of `image` before its result (ALFA only).
    fn partial(&self, _image: &InputImage, _partial: &Partial) {}
}

/// Map values spanned by the overlay's colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OverlayRange {
    Fixed(f32, f32),
    /// Each image's own range (hides how anomalous an image is overall).
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

/// The OK/NG decision a batch applies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Image score at or above it: NG.
    pub image: f32,
    /// Map values at or above it are outlined in the overlay.
    pub region: Option<f32>,
    /// How the threshold was set (`from 40 good images at FPR 1%, 2026-11-20`, `--threshold`).
    pub how: String,
}

/// Outputs that exist before the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to start (nothing is overwritten silently).
    Refuse,
    /// Overwrite them.
    Overwrite,
    /// Keep finished images and analyse the rest.
    Resume,
}

/// Everything a batch is told besides its images and model.
#[derive(Debug, Clone)]
pub struct BatchSpec {
    pub method: MethodKind,
    /// The class of every image; else the class their MVTec AD layout names.
    pub class: Option<String>,
    pub sources: ClassSources,
    pub settings: DetectSettings,
    pub out: PathBuf,
    pub overlay_range: OverlayRange,
    pub colormap: Colormap,
    /// The OK/NG decision of each class (from `--threshold`, or the class's recipe); a
    /// class without one gets no verdicts.
    pub decisions: BTreeMap<String, Decision>,
    pub existing: Existing,
    pub shard: Option<Shard>,
}

/// One image of a plan.
#[derive(Debug, Clone)]
pub struct PlannedImage {
    pub image: InputImage,
    pub class: String,
    pub outputs: Outputs,
    /// The record of an earlier run that finished this image (`--resume`).
    pub finished: Option<serde_json::Value>,
}

/// The images of a run and where their outputs go, checked before any model is loaded.
#[derive(Debug)]
pub struct Plan {
    pub images: Vec<PlannedImage>,
    /// The output folder, removed when the run ends with it empty and it was this
    /// run's (a run refused after planning leaves nothing behind).
    _folder: Option<OutputFolder>,
}

impl Plan {
    /// The images of `paths` (this shard's), each with its class and outputs; refuses
    /// images without a class and outputs that exist unless told what to do with them.
    pub fn new(paths: &[PathBuf], spec: &BatchSpec) -> Result<Self, BatchError> {
        let mut found = inputs::collect(paths)?;
        if let Some(shard) = spec.shard {
            found = shard.select(found, |image| image.output_stem.clone());
        }
        let folder = prepare_output_folder(&spec.out)?;
        let mut images = Vec::with_capacity(found.len());
        for image in found {
            let class = spec.class.clone().or_else(|| image.class.clone()).ok_or_else(|| {
                BatchError::Invalid(format!(
                    "no class for {}: pass --class NAME (the images are not in an MVTec AD layout that names it)",
                    image.path.display()
                ))
            })?;
            let outputs = Outputs::of(&spec.out, &image);
            let finished = if spec.existing == Existing::Resume { outputs.finished()? } else { None };
            images.push(PlannedImage { image, class, outputs, finished });
        }
        if spec.existing == Existing::Refuse {
            let existing: Vec<&Path> = images.iter().flat_map(|i| i.outputs.all()).filter(|p| p.exists()).collect();
            if let Some(first) = existing.first() {
                return Err(BatchError::Invalid(format!(
                    "{} output file(s) already exist in {}, e.g. {}: pass --resume to keep finished images and analyse the rest, \
                     --force to overwrite them, or choose another output folder",
                    existing.len(),
                    spec.out.display(),
                    first.display()
                )));
            }
        }
        Ok(Self { images, _folder: Some(folder) })
    }

    /// The classes of the images, sorted, each once.
    pub fn classes(&self) -> Vec<String> {
        let classes: std::collections::BTreeSet<&str> = self.images.iter().map(|i| i.class.as_str()).collect();
        classes.into_iter().map(str::to_owned).collect()
    }

    /// Images an earlier run finished.
    pub fn finished(&self) -> usize {
        self.images.iter().filter(|i| i.finished.is_some()).count()
    }

    /// Refuses to resume over records made by another method, model or settings:
    /// their maps would not be this run's.
    pub fn check_resumable(&self, method: MethodKind, model: &str, settings: &DetectSettings) -> Result<(), BatchError> {
        let (settings, method) = (as_read(settings)?, as_read(&method)?);
        for planned in &self.images {
            let Some(record) = &planned.finished else { continue };
            let differs = [
                ("method", record.get("method") != Some(&method)),
                ("model", record.get("model") != Some(&serde_json::Value::from(model))),
                ("settings", record.get("settings") != Some(&settings)),
            ];
            if let Some((what, _)) = differs.iter().find(|(_, differs)| *differs) {
                return Err(BatchError::Invalid(format!(
                    "cannot resume: {} was made with another {what} than this run's; pass the same options as the \
                     interrupted run, --force to analyse everything again, or another output folder",
                    planned.outputs.record.display()
                )));
            }
        }
        Ok(())
    }
}

/// `value` as a record read back from its file holds it: through JSON text, since an
/// `f32` serialised and read back is the `f64` nearest its decimal form.
fn as_read(value: &impl Serialize) -> Result<serde_json::Value, BatchError> {
    serde_json::to_string(value)
        .and_then(|text| serde_json::from_str(&text))
        .map_err(|e| BatchError::Invalid(e.to_string()))
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
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f32>,
    #[serde(flatten)]
    findings: Findings<'a>,
}

/// An image's result as the summary, `scores.csv` and the report need it.
#[derive(Debug, Clone)]
pub struct Scored {
    pub image: InputImage,
    pub overlay: PathBuf,
    pub map: PathBuf,
    pub score: f32,
    pub verdict: Option<Verdict>,
    pub descriptors: Vec<String>,
}

impl Scored {
    /// From a finished image's record.
    fn from_record(planned: &PlannedImage, record: &serde_json::Value) -> Self {
        let descriptors = record["descriptors"]
            .as_array()
            .map(|d| d.iter().take(report::MAX_DESCRIPTORS).filter_map(|m| m["text"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Self {
            image: planned.image.clone(),
            overlay: planned.outputs.overlay.clone(),
            map: planned.outputs.map.clone(),
            score: record["image_score"].as_f64().unwrap_or(f64::NAN) as f32,
            verdict: serde_json::from_value(record["verdict"].clone()).ok(),
            descriptors,
        }
    }
}

/// Which prompt set an image's record names.
#[derive(Debug, Clone)]
pub struct PromptOrigin {
    /// The prompt-set file, or `shipped` for the built-in set.
    pub set: String,
    /// The class has no prompt set of its own; the generic set was used.
    pub generic_fallback: bool,
}

impl From<&ResolvedPrompts> for PromptOrigin {
    fn from(resolved: &ResolvedPrompts) -> Self {
        Self {
            set: resolved.path.as_ref().map_or("shipped".into(), |p| p.display().to_string()),
            generic_fallback: resolved.generic_fallback,
        }
    }
}

/// Writes a batch's files: each image's map, overlay and record, then `scores.csv`,
/// `summary.json` and `report.html`. [`Runner`] writes what its analyser finds; the
/// app's "Export run" writes the results it already has, into the same files.
pub struct Writer<'a> {
    pub spec: &'a BatchSpec,
    /// The model's identity (recorded with each image).
    pub model: String,
    pub precision: Precision,
}

impl Writer<'_> {
    /// Writes the outputs of `image` (decoded: `decoded`), whose result is `outcome`:
    /// the map, the overlay, then the record (last, so an image with all three is
    /// complete). Returns its result for the summary and its record as JSON.
    pub fn write_image(
        &self,
        image: &InputImage,
        class: &str,
        outputs: &Outputs,
        decoded: &DynamicImage,
        outcome: &Outcome,
        prompts: &PromptOrigin,
    ) -> Result<(Scored, String), BatchError> {
        let decision = self.spec.decisions.get(class);
        let verdict = decision.map(|d| Verdict::of(outcome.image_score, d.image));
        if let Some(parent) = outputs.map.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BatchError::write(parent, e))?;
        }
        export::write_map_tiff(&outputs.map, &outcome.map)?;
        let style = self.overlay_style(image, outcome, verdict, decision);
        export::write_png(&outputs.overlay, &export::render_overlay(decoded, &outcome.map, &style)?)?;
        let record = Record {
            file: image.path.display().to_string(),
            method: self.spec.method,
            class,
            map: outputs.map.display().to_string(),
            overlay: outputs.overlay.display().to_string(),
            prompt_set: prompts.set.clone(),
            generic_fallback: prompts.generic_fallback,
            model: &self.model,
            precision: self.precision,
            settings: &self.spec.settings,
            verdict,
            threshold: decision.map(|d| d.image),
            findings: outcome.findings(),
        };
        let json = serde_json::to_string(&record).map_err(|e| BatchError::Invalid(e.to_string()))?;
        write_atomic(&outputs.record, json.as_bytes()).map_err(|e| BatchError::write(&outputs.record, e))?;
        let scored = Scored {
            image: image.clone(),
            overlay: outputs.overlay.clone(),
            map: outputs.map.clone(),
            score: outcome.image_score,
            verdict,
            descriptors: outcome.top_descriptors(report::MAX_DESCRIPTORS),
        };
        Ok((scored, json))
    }

    /// The overlay names the image, method and score, outlines the region at or above
    /// the region threshold and carries the verdict, so it says what it shows on its own.
    fn overlay_style(&self, image: &InputImage, outcome: &Outcome, verdict: Option<Verdict>, decision: Option<&Decision>) -> OverlayStyle {
        let map = &outcome.map;
        let range = match self.spec.overlay_range {
            OverlayRange::Fixed(lo, hi) => (lo, hi),
            OverlayRange::PerImage => {
                let lo = map.values.iter().copied().fold(f32::INFINITY, f32::min);
                (lo, map.max().max(lo + f32::EPSILON))
            }
        };
        let mut score_line = format!("{} image score {:.3}", self.spec.method.name(), outcome.image_score);
        if let (Some(decision), Some(verdict)) = (decision, verdict) {
            score_line.push_str(&format!(" {} (threshold {:.3})", verdict.label(), decision.image));
        }
        OverlayStyle {
            range,
            colormap: self.spec.colormap,
            caption: vec![image.output_stem.display().to_string(), score_line],
            outline: decision.and_then(|d| d.region),
            badge: verdict,
            ..Default::default()
        }
    }
}

/// Analyses and writes images one at a time.
pub struct Runner<'a> {
    pub analyser: Analyser,
    pub writer: Writer<'a>,
}

impl<'a> Runner<'a> {
    pub fn new(analyser: Analyser, spec: &'a BatchSpec, model: String, precision: Precision) -> Self {
        Self { analyser, writer: Writer { spec, model, precision } }
    }

    pub fn spec(&self) -> &'a BatchSpec {
        self.writer.spec
    }

    /// Analyses `image` and writes its outputs ([`Writer::write_image`]).
    pub fn process(&mut self, image: &InputImage, class: &str, outputs: &Outputs, observer: &dyn Observer) -> Result<(Scored, String), BatchError> {
        self.analyser.prepare(class, observer)?;
        let decoded = clip::open_image(&image.path)?;
        let mut tell = |partial: Partial| observer.partial(image, &partial);
        let progress: Option<&mut dyn FnMut(Partial)> = if observer.wants_partials() { Some(&mut tell) } else { None };
        let outcome = self.analyser.analyse(&decoded, class, progress)?;
        let resolved = self.analyser.prompts(class).ok_or(crate::detect::DetectError::NotPrepared)?;
        self.writer.write_image(image, class, outputs, &decoded, &outcome, &PromptOrigin::from(resolved))
    }

    /// Runs `plan`: images an earlier run finished are counted from their records,
    /// the others analysed in order until done or `stop` is set (checked between
    /// images). Writes `scores.csv` and `summary.json` either way.
    pub fn run(&mut self, plan: &Plan, observer: &dyn Observer, stop: &AtomicBool) -> Result<RunResult, BatchError> {
        // Each class's prompts and references first: an error there (no references for
        // a DINOv2 bank, an unreadable prompt set) is every image's, said once before
        // any image is analysed, as `alfa watch` does.
        let unfinished: std::collections::BTreeSet<&str> =
            plan.images.iter().filter(|i| i.finished.is_none()).map(|i| i.class.as_str()).collect();
        for class in unfinished {
            self.analyser.prepare(class, observer)?;
        }
        let mut summary = Summary { images: plan.images.len(), ..Default::default() };
        let mut scored = Vec::with_capacity(plan.images.len());
        for planned in &plan.images {
            if let Some(record) = &planned.finished {
                summary.resumed += 1;
                scored.push(Scored::from_record(planned, record));
                continue;
            }
            if stop.load(Ordering::SeqCst) {
                summary.interrupted = true;
                break;
            }
            observer.image_started(&planned.image);
            match self.process(&planned.image, &planned.class, &planned.outputs, observer) {
                Ok((result, json)) => {
                    summary.analysed += 1;
                    observer.image_finished(&planned.image, &Ok(json));
                    scored.push(result);
                }
                Err(e) => {
                    summary.failed += 1;
                    observer.image_finished(&planned.image, &Err(e.to_string()));
                }
            }
        }
        self.writer.write_results(&mut summary, &scored, None)?;
        Ok(RunResult { summary, scored })
    }
}

impl Writer<'_> {
    /// Counts the verdicts of `scored` into `summary` and writes `scores.csv` (merged
    /// with earlier runs') and `summary.json`, with why the run `stopped` if it was told.
    pub fn write_results(&self, summary: &mut Summary, scored: &[Scored], stopped: Option<String>) -> Result<(), BatchError> {
        for s in scored {
            match s.verdict {
                Some(Verdict::Ok) => summary.ok += 1,
                Some(Verdict::Ng) => summary.ng += 1,
                None => {}
            }
        }
        let rows = scored
            .iter()
            .map(|s| {
                let relative = s.map.strip_prefix(&self.spec.out).unwrap_or(&s.map);
                (relative.display().to_string(), ScoreRow { score: s.score, verdict: s.verdict })
            })
            .collect::<BTreeMap<_, _>>();
        if !rows.is_empty() {
            merge_scores(&self.spec.out.join(self.run_file("scores", "csv")), rows)?;
        }
        self.write_summary(summary, stopped)
    }

    /// A per-run file's name ([`shard::run_file_name`]).
    pub fn run_file(&self, name: &str, extension: &str) -> String {
        shard::run_file_name(self.spec.shard, name, extension)
    }

    /// `report.html` (`report-shard-I-of-N.html` for a shard): the run's page, linking
    /// the overlays beside it. Returns its path.
    pub fn write_report(&self, result: &RunResult) -> Result<PathBuf, BatchError> {
        use report::{ReportCounts, ReportImage, ReportRun, ReportThreshold};
        let summary = &result.summary;
        let settings = as_read(&self.spec.settings)?;
        let run = ReportRun {
            title: format!("alfa detect: {}", self.spec.class.as_deref().unwrap_or("classes from the folder layout")),
            created: crate::time::utc_minute(std::time::SystemTime::now()),
            model: self.model.clone(),
            method: self.spec.method.name(),
            settings: report::settings_list(&settings),
            threshold: report_threshold(&self.spec.decisions).map(|(value, how)| ReportThreshold { value, how }),
            counts: ReportCounts {
                images: summary.images,
                ok: summary.ok,
                ng: summary.ng,
                failed: summary.failed,
                interrupted: summary.interrupted,
            },
        };
        let images: Vec<ReportImage> = result
            .scored
            .iter()
            .map(|s| ReportImage {
                file: s.image.path.display().to_string(),
                overlay: report::relative_link(&self.spec.out, &s.overlay).unwrap_or_else(|| s.overlay.display().to_string()),
                score: s.score,
                verdict: s.verdict,
                truth: report::truth_from_path(&s.image.path),
                descriptors: s.descriptors.clone(),
            })
            .collect();
        let path = self.spec.out.join(self.run_file("report", "html"));
        report::write_report(&path, &run, &images).map_err(|e| BatchError::io(&path, e))?;
        Ok(path)
    }

    /// `summary.json`: the counts and what decided them.
    fn write_summary(&self, summary: &Summary, stopped: Option<String>) -> Result<(), BatchError> {
        #[derive(Serialize)]
        struct SummaryFile<'a> {
            #[serde(flatten)]
            summary: &'a Summary,
            method: MethodKind,
            model: &'a str,
            precision: Precision,
            settings: &'a DetectSettings,
            /// The decision of a run's one class (or of every class, when they share it).
            #[serde(skip_serializing_if = "Option::is_none")]
            decision: Option<&'a Decision>,
            /// Each class's decision, when a run's classes have different ones.
            #[serde(skip_serializing_if = "Option::is_none")]
            decisions: Option<&'a BTreeMap<String, Decision>>,
            shard: Option<String>,
            /// Why a watch ended.
            #[serde(skip_serializing_if = "Option::is_none")]
            stopped: Option<String>,
        }
        let file = SummaryFile {
            summary,
            method: self.spec.method,
            model: &self.model,
            precision: self.precision,
            settings: &self.spec.settings,
            decision: shared_decision(&self.spec.decisions),
            decisions: shared_decision(&self.spec.decisions).is_none().then_some(&self.spec.decisions).filter(|d| !d.is_empty()),
            shard: self.spec.shard.map(|s| s.to_string()),
            stopped,
        };
        let path = self.spec.out.join(self.run_file("summary", "json"));
        let json = serde_json::to_string_pretty(&file).map_err(|e| BatchError::Invalid(e.to_string()))?;
        write_atomic(&path, json.as_bytes()).map_err(|e| BatchError::write(&path, e))
    }
}

/// The decision every class of a run shares, if they share one.
fn shared_decision(decisions: &BTreeMap<String, Decision>) -> Option<&Decision> {
    let first = decisions.values().next()?;
    decisions.values().all(|d| d == first).then_some(first)
}

/// The report's one threshold line: the decision the classes share, or, when their
/// recipes differ, each class's (the histogram marks the first class's).
fn report_threshold(decisions: &BTreeMap<String, Decision>) -> Option<(f32, String)> {
    if let Some(shared) = shared_decision(decisions) {
        return Some((shared.image, shared.how.clone()));
    }
    let (first_class, first) = decisions.iter().next()?;
    let each: Vec<String> = decisions.iter().map(|(class, d)| format!("{class} {} ({})", d.image, d.how)).collect();
    Some((first.image, format!("per class: {}; the histogram marks {first_class}'s", each.join("; "))))
}

/// A finished (or interrupted) run.
#[derive(Debug)]
pub struct RunResult {
    pub summary: Summary,
    /// Every image with a result, in plan order.
    pub scored: Vec<Scored>,
}
