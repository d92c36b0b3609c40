//! `alfa watch`: a hot folder, analysed as images arrive (the loop is
//! [`crate::batch::watch`]; this parses options, loads the model and prints).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use super::analysis::{AnalysisArgs, stop_on_interrupt};
use crate::batch::watch::{RESULTS, Watch, WatchEnd, WatchObserver, WatchSpec};
use crate::batch::{Existing, Observer, Scored};
use crate::detect::inputs::InputImage;
use crate::recipe::OtherRecipe;

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// Output folder: per image what `alfa detect` writes (<stem>.tiff, <stem>_overlay.png,
    /// <stem>.json), one JSON line per image in results.jsonl; scores.csv and
    /// summary.json when the watch stops.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Move each input into DIR once its outputs are written (a name already there gets
    /// -2, -3, ...). Inputs are never deleted; failed ones stay in the watched folder.
    #[arg(long, value_name = "DIR")]
    pub done: Option<PathBuf>,
    /// A file is taken once its size and times stayed the same this long (for writers
    /// that write in place; a file renamed into the folder is stable at once).
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub settle_ms: u64,
    /// List the folder every --poll-ms instead of using file events (network folders
    /// written by other machines; file events are used on Linux only).
    #[arg(long)]
    pub poll: bool,
    /// How often the folder is listed when polling.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_ms: u64,
    /// The folder to watch (its files; sub-folders are not watched).
    #[arg(value_name = "IN")]
    pub folder: PathBuf,
}

/// Runs the watch; returns the exit code (130 when stopped by Ctrl-C or SIGTERM).
pub fn run(args: WatchArgs) -> Result<u8> {
    let mut spec = args.analysis.spec(args.out.clone(), Existing::Resume, None)?;
    let watch_spec = WatchSpec {
        folder: args.folder.clone(),
        done: args.done.clone(),
        settle: Duration::from_millis(args.settle_ms),
        force_polling: args.poll,
        poll_interval: Duration::from_millis(args.poll_ms),
    };
    let watch = Watch::prepare(&spec, watch_spec)?;
    if watch.plan.finished() > 0 {
        eprintln!("{} image(s) in {} were finished by an earlier run", watch.plan.finished(), args.folder.display());
    }
    // No --force here: a recipe made with another model, method or settings is refused
    // unless --threshold replaces its thresholds.
    let prepared = args.analysis.prepare(&mut spec, &watch.plan, &[watch.class().to_owned()], OtherRecipe::Refuse)?;
    let mut runner = args.analysis.runner(&spec, prepared)?;
    let stop = stop_on_interrupt()?;
    let log = Log { folder: args.folder.clone(), json: args.analysis.json };
    let result = watch.run(&mut runner, &log, &stop)?;
    let counts = crate::batch::Summary { interrupted: false, ..result.summary.clone() };
    eprintln!("stopped watching {}: {}", args.folder.display(), counts.line(!spec.decisions.is_empty()));
    if let Some(e) = &result.unwritten {
        eprintln!("error: {e}");
    }
    match result.end {
        WatchEnd::Stopped if result.unwritten.is_none() => Ok(130),
        WatchEnd::Stopped => bail!("scores.csv or summary.json could not be written"),
        end => bail!("{}", end.describe()),
    }
}

/// One line per image on stderr (`OK 0.412 part_017.png`), records on stdout with --json.
struct Log {
    folder: PathBuf,
    json: bool,
}

impl Log {
    fn name<'a>(&self, path: &'a Path) -> std::borrow::Cow<'a, str> {
        path.strip_prefix(&self.folder).unwrap_or(path).to_string_lossy()
    }
}

impl Observer for Log {
    fn message(&self, text: &str) {
        eprintln!("{text}");
    }
}

impl WatchObserver for Log {
    fn watching(&self, folder: &Path, how: &str) {
        eprintln!("watching {} ({how}); results in {RESULTS}; Ctrl-C stops", folder.display());
    }

    fn analysed(&self, image: &InputImage, scored: &Scored, record: &str) {
        let verdict = scored.verdict.map_or("--", |v| v.label());
        eprintln!("{verdict} {:.3} {}", scored.score, self.name(&image.path));
        if self.json {
            // A closed pipe (`| head`) is not worth stopping the watch for.
            let _ = writeln!(std::io::stdout().lock(), "{record}");
        }
    }

    fn failed(&self, file: &Path, reason: &str) {
        eprintln!("error {}: {reason}", self.name(file));
    }
}
