//! `alfa detect`: anomaly maps, overlays and JSON records for images and folders.

use std::cell::RefCell;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::analysis::{AnalysisArgs, stop_on_interrupt};
use super::progress_label;
use crate::batch::{self, Existing, Observer, Plan, Shard};
use crate::detect::Partial;
use crate::detect::inputs::InputImage;
use crate::recipe::OtherRecipe;

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// Output folder: <stem>.tiff (float32 map at the image's size), <stem>_overlay.png,
    /// <stem>.json, and scores.csv (image scores). MVTec AD inputs keep the evaluation
    /// layout <class>/test/<defect>/<stem>.tiff.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Overwrite outputs that already exist, and apply a recipe's thresholds even when
    /// it was made with another model, method or settings (with a warning).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Continue an interrupted run into the same --out: images whose outputs are all
    /// there are kept (and counted), the rest analysed. The options must be the
    /// interrupted run's.
    #[arg(long)]
    pub resume: bool,
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
    /// With --json: before each image's record, print what is known earlier as lines
    /// of their own: {"file", "partial": "global", "global_score"} after the global
    /// pass, then {"file", "partial": "scale", "scale", "done", "total", "image_score"}
    /// after each window scale but the last (ALFA only). The records are unchanged.
    #[arg(long, requires = "json")]
    pub progressive: bool,
    /// Images or folders (searched recursively).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

pub fn run(args: DetectArgs) -> Result<batch::RunStatus> {
    let existing = match (args.force, args.resume) {
        (true, _) => Existing::Overwrite,
        (_, true) => Existing::Resume,
        _ => Existing::Refuse,
    };
    let mut spec = args.analysis.spec(args.out.clone(), existing, args.shard)?;
    let plan = Plan::new(&args.inputs, &spec)?;
    let other = if args.force { OtherRecipe::Apply } else { OtherRecipe::RefuseUnlessForced };
    let prepared = args.analysis.prepare(&mut spec, &plan, &plan.classes(), other)?;
    if args.resume && plan.finished() > 0 {
        eprintln!("resuming: {} of {} image(s) finished by an earlier run", plan.finished(), plan.images.len());
    }
    let mut runner = args.analysis.runner(&spec, prepared)?;

    let stop = stop_on_interrupt()?;
    let observer = Terminal::new(plan.images.len() - plan.finished(), args.analysis.json, args.progressive);
    let result = runner.run(&plan, &observer, &stop)?;
    observer.bar.finish_and_clear();
    eprintln!("{}", result.summary.line(!spec.decisions.is_empty()));
    if args.report {
        let page = runner.writer.write_report(&result)?;
        eprintln!("report: {}", page.display());
    }
    let summary = &result.summary;
    if summary.failed > 0 && summary.analysed + summary.resumed > 0 {
        eprintln!("{} image(s) failed (reasons above); the others were written to {}", summary.failed, args.out.display());
    } else if summary.failed > 0 {
        eprintln!("no image could be analysed (reasons above); {} holds the run's summary", args.out.display());
    }
    Ok(result.summary.status())
}

/// Progress on the terminal: a bar over the images (and one over a class's reference
/// images while its bank is built), notes above them, records on stdout.
struct Terminal {
    bars: MultiProgress,
    bar: ProgressBar,
    references: RefCell<Option<ProgressBar>>,
    json: bool,
    progressive: bool,
}

impl Terminal {
    fn new(images: usize, json: bool, progressive: bool) -> Self {
        let bars = MultiProgress::new();
        let bar = if images < 2 { ProgressBar::hidden() } else { bars.add(ProgressBar::new(images as u64)) };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images ({eta} left) {wide_msg}").expect("the template is valid"),
        );
        Self { bars, bar, references: RefCell::new(None), json, progressive }
    }

    /// One line on stdout, above the bars.
    fn print(&self, line: &str) {
        self.bars.suspend(|| {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not worth failing the run for.
            let _ = writeln!(stdout, "{line}");
        });
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
            Ok(json) if self.json => self.print(json),
            Ok(_) => {}
            Err(e) => self.bars.suspend(|| eprintln!("error: {}: {e}", image.path.display())),
        }
        self.bar.inc(1);
    }

    fn wants_partials(&self) -> bool {
        self.progressive
    }

    fn partial(&self, image: &InputImage, partial: &Partial) {
        /// One partial line; scores as f32, so they read as the record's do.
        #[derive(serde::Serialize)]
        #[serde(tag = "partial", rename_all = "lowercase")]
        enum Line {
            Global { file: String, global_score: f32 },
            Scale { file: String, scale: usize, done: usize, total: usize, image_score: f32 },
        }
        let file = image.path.display().to_string();
        let line = match *partial {
            Partial::Global { global_score } => Line::Global { file, global_score },
            Partial::Scale { scale, done, total, image_score, .. } => Line::Scale { file, scale, done, total, image_score },
        };
        if let Ok(text) = serde_json::to_string(&line) {
            self.print(&text);
        }
    }
}
