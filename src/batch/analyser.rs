//! The method that analyses a batch's images, with what it has prepared per class:
//! ALFA encodes a class's prompts and builds its reference bank once; a baseline is
//! prepared again when the class changes.

use std::collections::HashMap;
use std::path::PathBuf;

use image::DynamicImage;
use serde::Serialize;

use super::{BatchError, Observer};
use crate::clip;
use crate::detect::baselines::{BaselineOptions, build_method_with};
use crate::detect::maps::Grid;
use crate::detect::bank::ReferenceBank;
use crate::detect::references::{draw, list_references};
use crate::detect::threshold::GoodScores;
use crate::detect::{ClassPrompts, ClassSpec, DetectSettings, Detection, Detector, Method, MethodKind, Partial, RefsBackbone};
use crate::prompts::{PromptStore, ResolvedPrompts};
use crate::recipe::Recipes;

/// Where a class's prompts and reference images come from.
#[derive(Debug, Clone)]
pub struct ClassSources {
    /// One prompt-set file for every class instead of each class's own.
    pub prompts_file: Option<PathBuf>,
    /// The class recipes: a class's prompt set (`<class>/prompts.toml`) and reference
    /// images (`<class>/refs/`).
    pub recipes: Recipes,
    /// A folder of reference images instead of the class's own.
    pub references: Option<PathBuf>,
    /// Use this many of the references, drawn with `seed`.
    pub shots: Option<usize>,
    pub seed: u64,
    /// Ignore reference images even when the class has some.
    pub zero_shot: bool,
}

/// What a record says about the image: ALFA's whole detection (scores, prompts,
/// descriptors, few-shot), or a baseline's image score.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Findings<'a> {
    Alfa(&'a Detection),
    Baseline { image_score: f32 },
}

/// One image's result, whichever method made it.
pub struct Outcome {
    pub image_score: f32,
    pub map: Grid,
    pub detection: Option<Detection>,
}

impl Outcome {
    pub fn findings(&self) -> Findings<'_> {
        match &self.detection {
            Some(detection) => Findings::Alfa(detection),
            None => Findings::Baseline { image_score: self.image_score },
        }
    }

    /// The best-matching defect descriptors, best first (ALFA only).
    pub fn top_descriptors(&self, n: usize) -> Vec<String> {
        self.detection.as_ref().map_or_else(Vec::new, |d| d.descriptors.iter().take(n).map(|m| m.text.clone()).collect())
    }
}

enum Engine {
    Alfa {
        detector: Detector,
        prepared: HashMap<String, (ClassPrompts, Option<ReferenceBank>)>,
    },
    Baseline {
        method: Box<dyn Method>,
        /// The class `method` is prepared for.
        prepared: Option<String>,
    },
}

/// A method with its per-class preparation and the prompt sets it resolved.
pub struct Analyser {
    kind: MethodKind,
    engine: Engine,
    settings: DetectSettings,
    sources: ClassSources,
    resolved: HashMap<String, ResolvedPrompts>,
}

impl Analyser {
    pub fn new(
        kind: MethodKind,
        options: BaselineOptions,
        detector: Detector,
        settings: DetectSettings,
        sources: ClassSources,
    ) -> Result<Self, BatchError> {
        settings.validate(detector.clip.model.vision.grid())?;
        let engine = match kind {
            MethodKind::Alfa => Engine::Alfa { detector, prepared: HashMap::new() },
            kind => Engine::Baseline { method: build_method_with(kind, detector, settings.clone(), options)?, prepared: None },
        };
        Ok(Self { kind, engine, settings, sources, resolved: HashMap::new() })
    }

    pub fn kind(&self) -> MethodKind {
        self.kind
    }

    pub fn settings(&self) -> &DetectSettings {
        &self.settings
    }

    /// The prompt set `class` resolved to (after [`Analyser::prepare`]).
    pub fn prompts(&self, class: &str) -> Option<&ResolvedPrompts> {
        self.resolved.get(class)
    }

    /// Resolves `class`'s prompts and prepares the method for it, when not yet done.
    pub fn prepare(&mut self, class: &str, observer: &dyn Observer) -> Result<(), BatchError> {
        if !self.resolved.contains_key(class) {
            let resolved = match &self.sources.prompts_file {
                Some(file) => PromptStore::from_file(file)?,
                None => PromptStore::in_recipes(&self.sources.recipes).resolve(class)?,
            };
            if resolved.generic_fallback && self.kind == MethodKind::Alfa {
                observer.message(&format!(
                    "note: no prompt set for class `{class}`: using the generic set (add {} to give it its own)",
                    self.sources.recipes.prompts_file(class).display()
                ));
            }
            self.resolved.insert(class.to_owned(), resolved);
        }
        let resolved = &self.resolved[class];
        match &mut self.engine {
            Engine::Alfa { detector, prepared } => {
                if !prepared.contains_key(class) {
                    let encoded = detector.encode_class(resolved.set.expand())?;
                    let bank = reference_bank(detector, &self.sources, class, &self.settings, observer)?;
                    prepared.insert(class.to_owned(), (encoded, bank));
                }
            }
            Engine::Baseline { method, prepared } => {
                if prepared.as_deref() != Some(class) {
                    let spec =
                        ClassSpec { id: class.to_owned(), name: resolved.set.class.name.clone(), prompts: resolved.set.expand() };
                    let references = baseline_references(method.kind(), &self.sources, class, observer)?;
                    method.prepare(&spec, &references)?;
                    *prepared = Some(class.to_owned());
                }
            }
        }
        Ok(())
    }

    /// Good images of `class` scored for its thresholds (`alfa threshold`), with the
    /// prompts and references [`Analyser::prepare`] made ready, by the app's code
    /// ([`Detector::score_good_images`]: a good image that is also a reference is scored
    /// against the other references; an unreadable one is left out and named). ALFA's
    /// only, as in the app: a baseline's thresholds are set by hand.
    pub fn score_good_images(
        &self,
        class: &str,
        good: &[PathBuf],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GoodScores, BatchError> {
        match &self.engine {
            Engine::Alfa { detector, prepared } => {
                let (class_prompts, bank) = prepared.get(class).ok_or(crate::detect::DetectError::NotPrepared)?;
                Ok(detector.score_good_images(good, class_prompts, bank.as_ref(), &self.settings, progress, &|| false)?)
            }
            Engine::Baseline { .. } => Err(BatchError::Invalid(format!(
                "thresholds are fitted on good images for ALFA (as in the app), not {}; set a baseline's by hand",
                self.kind.name()
            ))),
        }
    }

    /// One image through the method prepared for `class`, telling `progress` what
    /// is known before the result (ALFA only).
    pub fn analyse(&mut self, image: &DynamicImage, class: &str, progress: Option<&mut dyn FnMut(Partial)>) -> Result<Outcome, BatchError> {
        Ok(match &mut self.engine {
            Engine::Alfa { detector, prepared } => {
                let (class_prompts, bank) = prepared.get(class).ok_or(crate::detect::DetectError::NotPrepared)?;
                let mut detection = detector.detect_progressive(image, class_prompts, bank.as_ref(), &self.settings, progress)?;
                let map = std::mem::replace(&mut detection.map, Grid::new(0, 0, Vec::new()));
                Outcome { image_score: detection.image_score, map, detection: Some(detection) }
            }
            Engine::Baseline { method, .. } => {
                let scored = method.score(image)?;
                Outcome { image_score: scored.image_score, map: scored.map, detection: None }
            }
        })
    }
}

/// The reference files of `class` (drawn when `shots` is set); an explicit folder
/// without images is an error, a class without references is not.
fn reference_files(sources: &ClassSources, class: &str) -> Result<(PathBuf, Vec<PathBuf>), BatchError> {
    let dir = sources.references.clone().unwrap_or_else(|| sources.recipes.refs_dir(class));
    let mut files = list_references(&dir)?;
    if sources.references.is_some() && files.is_empty() {
        return Err(BatchError::Invalid(format!("no reference images in {}", dir.display())));
    }
    if let Some(shots) = sources.shots {
        files = draw(&files, shots, sources.seed);
    }
    Ok((dir, files))
}

/// The class's few-shot bank, or `None` (zero-shot), saying which.
fn reference_bank(
    detector: &Detector,
    sources: &ClassSources,
    class: &str,
    settings: &DetectSettings,
    observer: &dyn Observer,
) -> Result<Option<ReferenceBank>, BatchError> {
    if sources.zero_shot {
        return Ok(None);
    }
    let (dir, files) = reference_files(sources, class)?;
    let dinov2 = settings.refs_backbone == RefsBackbone::Dinov2;
    let no_references = |why: &str| {
        BatchError::Invalid(format!(
            "--refs-backbone dinov2 compares images with normal reference images, and {why} (add some with `alfa refs add \
             --class {class} IMAGE...` or give --refs DIR; --refs-backbone clip runs zero-shot without them)"
        ))
    };
    if files.is_empty() && dinov2 {
        return Err(no_references(&format!("`{class}` has none in {}", dir.display())));
    }
    if files.is_empty() {
        observer.message(&format!(
            "zero-shot for `{class}`: no reference images (add normal images with `alfa refs add --class {class} IMAGE...`)"
        ));
        return Ok(None);
    }
    let build = detector.build_reference_bank(&files, settings, |done, total| observer.references(done, total))?;
    for (file, reason) in &build.skipped {
        observer.message(&format!("warning: skipped reference {}: {reason}", file.display()));
    }
    match build.bank {
        Some(bank) => {
            let backbone = if dinov2 { ", DINOv2 patches" } else { "" };
            observer.message(&format!(
                "few-shot for `{class}`: {} reference image(s) from {}{backbone}",
                bank.files.len(),
                dir.display()
            ));
            Ok(Some(bank))
        }
        None if dinov2 => Err(no_references(&format!("none of those in {} could be read", dir.display()))),
        None => {
            observer.message(&format!("zero-shot for `{class}`: none of the reference images in {} could be read", dir.display()));
            Ok(None)
        }
    }
}

/// WinCLIP+'s and AnomalyDINO's reference images (decoded, an unreadable one skipped
/// and named), or none; zero-shot baselines say that the class's references are not used.
fn baseline_references(
    kind: MethodKind,
    sources: &ClassSources,
    class: &str,
    observer: &dyn Observer,
) -> Result<Vec<DynamicImage>, BatchError> {
    if sources.zero_shot {
        return Ok(Vec::new());
    }
    if !matches!(kind, MethodKind::Winclip | MethodKind::Anomalydino) {
        let dir = sources.recipes.refs_dir(class);
        let count = list_references(&dir)?.len();
        if count > 0 {
            observer.message(&format!(
                "note: --method {} is zero-shot only: the {count} reference image(s) of `{class}` are not used",
                kind.name()
            ));
        }
        return Ok(Vec::new());
    }
    let (dir, files) = reference_files(sources, class)?;
    let mut images = Vec::with_capacity(files.len());
    for file in &files {
        match clip::open_image(file) {
            Ok(image) => images.push(image),
            Err(e) => observer.message(&format!("warning: skipped reference {}: {e}", file.display())),
        }
    }
    if images.is_empty() {
        observer.message(&format!("zero-shot for `{class}`: no reference images"));
    } else {
        let method = if kind == MethodKind::Winclip { "WinCLIP+" } else { "AnomalyDINO" };
        observer.message(&format!("few-shot ({method}) for `{class}`: {} reference image(s) from {}", images.len(), dir.display()));
    }
    Ok(images)
}
