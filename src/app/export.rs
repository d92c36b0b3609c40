//! Exports: the overlay as PNG, the raw map as float32 TIFF, the thresholded mask
//! as PNG, and the scores of the whole list as CSV and JSON; and "Export run": every
//! analysed image of the list as `alfa detect --report` writes it, through the batch
//! module's [`Writer`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use eframe::egui::{self, Key};
use image::{DynamicImage, RgbaImage};
use serde::Serialize;

use super::prompt_editor::PromptEditor;
use super::state::{AppState, ModelStatus, Normalisation, Verdict, score_text};
use super::worker::{self, Analysis, Message};
use super::AlfaApp;
use std::sync::atomic::Ordering;
use crate::batch::{
    BatchError, BatchSpec, ClassSources, Decision, Existing, Outcome, OverlayRange, Outputs, PromptOrigin, RunResult, Scored, Summary, Writer,
};
use crate::recipe::Recipes;
use crate::clip::Precision;
use crate::detect::inputs::{self, InputImage};
use crate::eval::csv::field;
use crate::detect::export::{ExportError, OverlayStyle, render_overlay, threshold_mask, write_atomic, write_map_tiff, write_png};
use crate::detect::maps::Grid;

/// One row of the score table.
#[derive(Debug, Serialize)]
pub struct ScoreRow {
    pub file: String,
    pub name: String,
    pub method: Option<crate::detect::MethodKind>,
    pub image_score: Option<f32>,
    pub global_score: Option<f32>,
    pub local_max: Option<f32>,
    pub verdict: Option<&'static str>,
    /// The score is from earlier prompts or settings (the analysis was cancelled or
    /// is still running): not a result of what the rest of the table says.
    pub stale: bool,
    pub error: Option<String>,
}

/// The scores of the whole list, taken from the state so another thread can write them.
#[derive(Debug, Serialize)]
pub struct ScoreTable {
    pub class: String,
    /// The OK/NG threshold on image scores.
    pub threshold: f32,
    pub images: Vec<ScoreRow>,
}

impl ScoreTable {
    pub fn from_state(state: &AppState) -> Self {
        let images = state
            .entries
            .iter()
            .map(|e| {
                let a = e.analysis.as_ref();
                let d = a.and_then(|a| a.detection.as_ref());
                ScoreRow {
                    file: e.path.display().to_string(),
                    name: e.name.clone(),
                    method: a.map(|a| a.method),
                    image_score: a.map(|a| a.image_score),
                    global_score: d.map(|d| d.global_score),
                    local_max: d.map(|d| d.local_max),
                    verdict: a.map(|a| Verdict::of(a.image_score, state.image_threshold()).label()),
                    stale: e.stale && a.is_some(),
                    error: e.error.clone(),
                }
            })
            .collect();
        Self { class: state.settings.class.clone(), threshold: state.image_threshold(), images }
    }

    /// `scores.csv` and `scores.json` in `dir`; returns both paths.
    pub fn write(&self, dir: &Path) -> Result<[PathBuf; 2], ExportError> {
        let csv_path = dir.join("scores.csv");
        let mut csv = String::from("file,name,image_score,global_score,local_max,verdict,stale,error\n");
        let number = |v: Option<f32>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &self.images {
            let fields = [
                field(&r.file),
                field(&r.name),
                number(r.image_score),
                number(r.global_score),
                number(r.local_max),
                r.verdict.unwrap_or_default().to_owned(),
                r.stale.to_string(),
                field(r.error.as_deref().unwrap_or_default()),
            ];
            csv.push_str(&fields.join(","));
            csv.push('\n');
        }
        write_atomic(&csv_path, csv.as_bytes())?;
        let json_path = dir.join("scores.json");
        let json = serde_json::to_string_pretty(self).map_err(|e| ExportError::Write {
            path: json_path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&json_path, json.as_bytes())?;
        Ok([csv_path, json_path])
    }
}

/// The selected image's exports.
pub struct ImageExport {
    /// Its outputs' names start with this: the image's path in the list with `_` for
    /// the folder separators (`broken_large_015`), so images of one name in different
    /// folders do not overwrite each other.
    pub stem: String,
    /// The image file, decoded on the export's thread when `image` is `None` (the
    /// viewer may still show its thumbnail).
    pub source: PathBuf,
    pub image: Option<Arc<RgbaImage>>,
    pub map: Arc<Grid>,
    pub style: OverlayStyle,
    /// The region threshold: the mask is the map at or above it.
    pub threshold: f32,
}

/// The output name stem of a list entry named `name` (`broken_large/015.png`).
pub fn export_stem(name: &str) -> String {
    let without_extension = Path::new(name).with_extension("");
    let stem: String = without_extension
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_alphanumeric() || matches!(c, '-' | '.') { c } else { '_' })
        .collect();
    let stem = stem.trim_matches(['_', '.']).to_owned();
    if stem.is_empty() { "image".into() } else { stem }
}

/// One export: the list's scores and, when an analysed image is on screen, its files.
pub struct Export {
    pub scores: ScoreTable,
    pub image: Option<ImageExport>,
}

impl Export {
    fn paths(&self, dir: &Path) -> Vec<PathBuf> {
        let mut paths = vec![dir.join("scores.csv"), dir.join("scores.json")];
        if let Some(x) = &self.image {
            paths.extend(["overlay.png", "map.tiff", "mask.png"].map(|what| dir.join(format!("{}_{what}", x.stem))));
        }
        paths
    }

    /// The files of this export that are in `dir` already: the user is asked before
    /// they are replaced.
    pub fn existing(&self, dir: &Path) -> Vec<PathBuf> {
        self.paths(dir).into_iter().filter(|p| p.exists()).collect()
    }

    /// Everything into `dir`; returns the files written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ExportError> {
        let paths = self.paths(dir);
        self.scores.write(dir)?;
        if let (Some(x), [_, _, overlay, map, mask]) = (&self.image, paths.as_slice()) {
            // The same overlay, with its legend, as `alfa detect` writes.
            let image = match &x.image {
                Some(image) => DynamicImage::ImageRgba8(RgbaImage::clone(image)),
                None => crate::clip::open_image(&x.source)
                    .map_err(|e| ExportError::Write { path: overlay.clone(), reason: e.to_string() })?,
            };
            write_png(overlay, &render_overlay(&image, &x.map, &x.style)?)?;
            write_map_tiff(map, &x.map)?;
            write_png(mask, &threshold_mask(&x.map, x.threshold))?;
        }
        Ok(paths)
    }
}

/// "Export run": the list's analysed images in the files `alfa detect --report` writes
/// (per image: map TIFF, overlay PNG, record JSON; then `scores.csv`, `summary.json`,
/// `report.html`), so what was reviewed in the window can be archived, compared with a
/// line's batches or scored with `alfa eval --maps`.
pub struct RunExport {
    /// Method, settings, OK/NG decision, overlay colours and the output folder.
    pub spec: BatchSpec,
    pub model: String,
    pub precision: Precision,
    pub prompts: PromptOrigin,
    /// The current results: images with their analyses, in list order.
    pub images: Vec<(InputImage, Arc<Analysis>)>,
    /// Images whose analysis failed (counted in the summary, not in the gallery).
    pub failed: usize,
    /// Images without a current result (not analysed yet, or from older prompts or
    /// settings): left out, and said so.
    pub left_out: usize,
}

impl RunExport {
    /// The run of what the window shows: the current results of the list with the
    /// method, settings, thresholds and colours in use, into `out`. `Err`: why there
    /// is nothing to export.
    pub fn of_state(state: &AppState, editor: Option<&PromptEditor>, recipes: &Recipes, out: PathBuf) -> Result<Self, String> {
        let Some(ModelStatus::Ready { model, precision, .. }) = &state.model else {
            return Err("nothing to export: no model is loaded".into());
        };
        let mut images = Vec::new();
        let (mut failed, mut left_out) = (0, 0);
        let mut stems: HashMap<PathBuf, &str> = HashMap::new();
        for entry in &state.entries {
            match (&entry.analysis, &entry.error) {
                (Some(analysis), None) if !entry.stale => {
                    let image = inputs::listed(&entry.path, &entry.name);
                    if let Some(other) = stems.insert(image.output_stem.clone(), &entry.name) {
                        return Err(format!("{other} and {} would write the same files: rename one", entry.name));
                    }
                    images.push((image, analysis.clone()));
                }
                (_, Some(_)) => failed += 1,
                _ => left_out += 1,
            }
        }
        if images.is_empty() {
            return Err("nothing to export: no image of the list is analysed with the current prompts and settings".into());
        }
        let s = &state.settings;
        let decision = Decision { image: state.image_threshold(), region: Some(state.region_threshold()), how: state.threshold_origin() };
        let range = match s.normalisation {
            Normalisation::Absolute => OverlayRange::Fixed(0.0, 1.0),
            Normalisation::PerImage => OverlayRange::PerImage,
            Normalisation::PerSet => {
                let (lo, hi) = state.levels(0);
                OverlayRange::Fixed(lo, hi)
            }
        };
        let spec = BatchSpec {
            method: s.method,
            class: Some(s.class.clone()),
            sources: ClassSources {
                prompts_file: None,
                recipes: recipes.clone(),
                references: None,
                shots: None,
                seed: 0,
                zero_shot: state.reference_files.is_empty(),
            },
            settings: s.detect.clone(),
            out,
            overlay_range: range,
            colormap: s.colormap,
            decisions: BTreeMap::from([(s.class.clone(), decision)]),
            existing: Existing::Overwrite,
            shard: None,
        };
        let prompts = match editor {
            Some(editor) => {
                let mut set = editor.source.as_ref().map_or("shipped".into(), |p| p.display().to_string());
                if editor.unsaved {
                    set.push_str(" (edited in the app, not saved)");
                }
                PromptOrigin { set, generic_fallback: editor.generic_fallback }
            }
            None => PromptOrigin { set: "shipped".into(), generic_fallback: false },
        };
        Ok(Self { spec, model: model.clone(), precision: *precision, prompts, images, failed, left_out })
    }

    /// Its files that are in the output folder already: the user is asked first.
    pub fn existing(&self) -> Vec<PathBuf> {
        let out = &self.spec.out;
        let per_image = self.images.iter().flat_map(|(image, _)| Outputs::of(out, image).all().map(Path::to_owned));
        let per_run = ["scores.csv", "summary.json", "report.html"].map(|name| out.join(name));
        per_image.chain(per_run).filter(|p| p.exists()).collect()
    }

    /// Writes everything, telling `progress` (done, total) after each image; returns a
    /// line for the status bar.
    pub fn write(&self, progress: impl Fn(usize, usize)) -> Result<String, BatchError> {
        crate::batch::prepare_output_folder(&self.spec.out)?.keep();
        let writer = Writer { spec: &self.spec, model: self.model.clone(), precision: self.precision };
        let class = self.spec.class.as_deref().unwrap_or_default();
        let mut scored: Vec<Scored> = Vec::with_capacity(self.images.len());
        for (done, (image, analysis)) in self.images.iter().enumerate() {
            let decoded = crate::clip::open_image(&image.path)?;
            let outcome =
                Outcome { image_score: analysis.image_score, map: Grid::clone(&analysis.map), detection: analysis.detection.clone() };
            let outputs = Outputs::of(&self.spec.out, image);
            scored.push(writer.write_image(image, class, &outputs, &decoded, &outcome, &self.prompts)?.0);
            progress(done + 1, self.images.len());
        }
        let mut summary =
            Summary { images: scored.len() + self.failed, analysed: scored.len(), failed: self.failed, ..Default::default() };
        writer.write_results(&mut summary, &scored, None)?;
        let result = RunResult { summary, scored };
        let report = writer.write_report(&result)?;
        let mut line = format!("exported {} images to {}: open {}", result.scored.len(), self.spec.out.display(), report.display());
        if self.left_out > 0 {
            line.push_str(&format!(" ({} without a current result left out)", self.left_out));
        }
        Ok(line)
    }
}

/// RFC 4180 quoting when needed.
/// An export waiting for the user's answer before it replaces files.
pub(super) enum PendingExport {
    Image(Export),
    Run(RunExport),
}

impl AlfaApp {
    /// Asks before an export replaces files, while one waits for the answer.
    pub(super) fn replace_question(&mut self, ctx: &egui::Context) {
        let Some((dir, _, existing)) = &self.pending_export else { return };
        let names: Vec<String> =
            existing.iter().map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string()).collect();
        let mut answer = None;
        egui::Window::new("Replace files?")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
            ui.label(format!("{} already has {}:", dir.display(), if names.len() == 1 { "this file" } else { "these files" }));
            // A run's export may replace thousands: the first few, then how many more.
            const SHOWN: usize = 8;
            for name in names.iter().take(SHOWN) {
                ui.label(egui::RichText::new(name).monospace());
            }
            if names.len() > SHOWN {
                ui.label(format!("… and {} more", names.len() - SHOWN));
            }
            ui.horizontal(|ui| {
                if ui.button("Replace").clicked() {
                    answer = Some(true);
                }
                if ui.button("Cancel (Esc)").clicked() || ui.input(|i| i.key_pressed(Key::Escape)) {
                    answer = Some(false);
                }
            });
        });
        match answer {
            Some(true) => match self.pending_export.take() {
                Some((dir, PendingExport::Image(export), _)) => self.write_export(dir, export),
                Some((_, PendingExport::Run(export), _)) => self.write_run_export(export),
                None => {}
            },
            Some(false) => {
                self.pending_export = None;
                self.state.notice = Some("export cancelled: nothing written".into());
            }
            None => {}
        }
    }

    /// Exports the list's scores and the image on screen into `dir`, asking first
    /// when that would replace files.
    pub(super) fn export_to(&mut self, dir: PathBuf) {
        let export = self.export_of_state();
        let existing = export.existing(&dir);
        if existing.is_empty() {
            self.write_export(dir, export);
        } else {
            self.pending_export = Some((dir, PendingExport::Image(export), existing));
        }
    }

    /// Exports the list's run into `dir` (as `alfa detect --report` writes it), asking
    /// first when that would replace files.
    pub(super) fn export_run_to(&mut self, dir: PathBuf) {
        if self.run_export_busy.load(Ordering::SeqCst) {
            self.state.notice = Some("a run export is being written: wait until it is done".into());
            return;
        }
        let export = match RunExport::of_state(&self.state, self.editor.as_ref(), &self.recipes, dir.clone()) {
            Ok(export) => export,
            Err(why) => {
                self.state.notice = Some(why);
                return;
            }
        };
        let existing = export.existing();
        if existing.is_empty() {
            self.write_run_export(export);
        } else {
            self.pending_export = Some((dir, PendingExport::Run(export), existing));
        }
    }

    /// Decodes, renders and writes off the UI thread, with its progress in the status bar.
    pub(super) fn write_run_export(&self, export: RunExport) {
        let outbox = self.workers.outbox();
        let busy = self.run_export_busy.clone();
        busy.store(true, Ordering::SeqCst);
        std::thread::spawn(move || {
            let progress = |done: usize, total: usize| {
                if done % 10 == 0 && done < total {
                    outbox.send(Message::Notice(format!("exporting the run: {done} of {total} images")));
                }
            };
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| export.write(progress)));
            let text = match written {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => format!("export failed: {e}"),
                Err(payload) => format!("export failed ({})", worker::panic_text(payload.as_ref())),
            };
            busy.store(false, Ordering::SeqCst);
            outbox.send(Message::Notice(text));
        });
    }

    /// Encodes and writes off the UI thread.
    pub(super) fn write_export(&self, dir: PathBuf, export: Export) {
        let outbox = self.workers.outbox();
        std::thread::spawn(move || {
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| export.write(&dir)));
            let text = match written {
                Ok(Ok(files)) => format!("exported {} files to {}", files.len(), dir.display()),
                Ok(Err(e)) => format!("export failed: {e}"),
                Err(payload) => format!("export failed ({})", worker::panic_text(payload.as_ref())),
            };
            outbox.send(Message::Notice(text));
        });
    }

    /// What an export writes now: the list's scores, and the overlay, map and mask
    /// of the image on screen when it is analysed.
    pub(super) fn export_of_state(&self) -> Export {
        let scores = ScoreTable::from_state(&self.state);
        let image = self.state.selected.and_then(|i| {
            let entry = &self.state.entries[i];
            let analysis: Arc<Analysis> = entry.analysis.clone()?;
            let picture = self.state.shown.as_ref().filter(|s| s.id == entry.id).map(|s| s.picture.image.clone());
            let (low, high) = self.state.levels(i);
            let s = &self.state.settings;
            let score = analysis.image_score;
            let threshold = self.state.image_threshold();
            let verdict = Verdict::of(score, threshold);
            let mut caption =
                vec![entry.name.clone(), format!("score {} {} (threshold {threshold:.3})", score_text(score, threshold), verdict.label())];
            if entry.stale {
                caption.push("from earlier prompts or settings".into());
            }
            Some(ImageExport {
                stem: export_stem(&entry.name),
                source: entry.path.clone(),
                image: picture,
                map: analysis.map.clone(),
                style: OverlayStyle {
                    colormap: s.colormap,
                    opacity: s.opacity,
                    range: (low, high),
                    caption,
                    outline: Some(self.state.region_threshold()),
                    // An old score gets no verdict (as in the list).
                    badge: (!entry.stale).then_some(verdict),
                },
                threshold: self.state.region_threshold(),
            })
        });
        Export { scores, image }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_of(name: &str, map: &Arc<Grid>) -> Export {
        let image = ImageExport {
            stem: export_stem(name),
            source: PathBuf::from(name),
            image: Some(Arc::new(RgbaImage::new(3, 2))),
            map: map.clone(),
            style: OverlayStyle::default(),
            threshold: 0.5,
        };
        Export { scores: ScoreTable { class: "bottle".into(), threshold: 0.5, images: Vec::new() }, image: Some(image) }
    }

    #[test]
    fn export_writes_every_file_and_names_what_it_would_replace() {
        let dir = tempfile::tempdir().unwrap();
        let map = Arc::new(Grid::new(3, 2, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]));
        let large = export_of("broken_large/015.png", &map);
        assert!(large.existing(dir.path()).is_empty());
        let written = large.write(dir.path()).unwrap();
        assert_eq!(written.len(), 5);
        assert!(written.iter().all(|p| p.is_file()));
        let tiff = crate::detect::export::read_map_tiff(&dir.path().join("broken_large_015_map.tiff")).unwrap();
        assert_eq!(&tiff, map.as_ref());
        // The same file name in another folder gets files of its own; only the list's
        // scores would be replaced, and the export says so before writing.
        let small = export_of("broken_small/015.png", &map);
        let names = |paths: Vec<PathBuf>| paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>();
        assert_eq!(names(small.existing(dir.path())), ["scores.csv", "scores.json"]);
        assert_eq!(names(large.existing(dir.path())).len(), 5);
    }

    #[test]
    fn stems_keep_the_relative_path() {
        assert_eq!(export_stem("broken_large/015.png"), "broken_large_015");
        assert_eq!(export_stem("test/good/000.PNG"), "test_good_000");
        assert_eq!(export_stem("a b/c.d.png"), "a_b_c.d");
        assert_eq!(export_stem(""), "image");
    }
}
