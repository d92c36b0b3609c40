//! Background threads. The UI thread only draws and sends jobs; the engine thread
//! owns the `Detector`, the loader thread decodes pictures for display. Results come
//! back as messages, each followed by a repaint request.
//!
//! Every analysis carries a generation number. Starting a new analysis (or
//! cancelling) raises the shared latest generation; the engine thread drops jobs and
//! stops loops whose generation is older, and the UI ignores their late results.

use eframe::egui;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use image::{GrayImage, RgbaImage};

use crate::cli::ModelArgs;
use crate::clip::{self, Clip, DownloadObserver, ModelRequest};
use crate::detect::maps::Grid;
use crate::detect::{ClassPrompts, DetectSettings, Detection, Detector};
use crate::prompts::PromptSet;

/// Index of an image in the app's list.
pub type ItemId = usize;

pub enum Job {
    LoadModel(ModelArgs),
    Analyse(AnalyseJob),
    /// Keeps the engine thread busy until the sender is dropped: a slow job whose end
    /// the test decides.
    #[cfg(test)]
    Hold(Receiver<()>),
}

pub struct AnalyseJob {
    pub generation: u64,
    pub prompts: PromptSet,
    pub settings: DetectSettings,
    /// In the order to analyse them (the image on screen first).
    pub items: Vec<(ItemId, PathBuf)>,
}

/// One image's result, shared between the list, the viewer and the exports.
pub struct Analysis {
    /// The engine's result; its `map` is moved to `map` (no copy).
    pub detection: Detection,
    pub map: Arc<Grid>,
    /// Smallest and largest map value, for normalisation.
    pub map_range: (f32, f32),
}

impl Analysis {
    fn new(mut detection: Detection) -> Self {
        let map = std::mem::replace(&mut detection.map, Grid::new(0, 0, Vec::new()));
        let map_range = map
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Self { detection, map: Arc::new(map), map_range }
    }
}

pub enum Message {
    ModelLoading { model: String },
    Download { file: String, done: u64, total: u64 },
    ModelReady { name: String },
    ModelFailed { model: String, error: String },
    /// The class's prompts are encoded; `encoded` texts went through the text tower.
    PromptsEncoded { generation: u64, encoded: usize, seconds: f64 },
    Analysed { generation: u64, id: ItemId, outcome: Result<Arc<Analysis>, String> },
    /// An analysis ended (finished, cancelled, or failed before any image).
    AnalysisDone { generation: u64, error: Option<String> },
    Thumbnail { id: ItemId, outcome: Result<egui::ColorImage, String> },
    Picture { id: ItemId, outcome: Result<Picture, String> },
    /// A file dialog's choice.
    Picked(Pick),
    /// A line for the status bar (exports).
    Notice(String),
}

pub enum Pick {
    Images(Vec<PathBuf>),
    ModelFolder(PathBuf),
}

/// A decoded image for the viewer, with its ground-truth mask if one exists.
#[derive(Clone)]
pub struct Picture {
    pub image: Arc<RgbaImage>,
    pub mask: Option<Arc<GrayImage>>,
}

/// Sends messages to the UI and wakes it.
#[derive(Clone)]
pub struct Outbox {
    tx: Sender<Message>,
    ctx: egui::Context,
}

impl Outbox {
    pub fn send(&self, message: Message) {
        // The receiver lives as long as the app; after it is gone nobody needs the message.
        let _ = self.tx.send(message);
        self.ctx.request_repaint();
    }
}

/// The UI's side of the background threads.
pub struct Workers {
    jobs: Sender<Job>,
    loads: Sender<LoadJob>,
    latest: Arc<AtomicU64>,
    outbox: Outbox,
    pub messages: Receiver<Message>,
}

impl Workers {
    /// `cache_dir` holds the text-feature cache (`None`: memory only).
    pub fn spawn(ctx: &egui::Context, cache_dir: Option<PathBuf>) -> Self {
        let (tx, messages) = crossbeam_channel::unbounded();
        let outbox = Outbox { tx, ctx: ctx.clone() };
        let latest = Arc::new(AtomicU64::new(0));
        let (jobs, job_rx) = crossbeam_channel::unbounded();
        let engine = Engine { outbox: outbox.clone(), latest: latest.clone(), cache_dir, detector: None, encoded: None };
        std::thread::Builder::new()
            .name("alfa-engine".into())
            .spawn(move || engine.run(job_rx))
            .expect("the OS can start a thread");
        let (loads, load_rx) = crossbeam_channel::unbounded();
        let loader_outbox = outbox.clone();
        std::thread::Builder::new()
            .name("alfa-loader".into())
            .spawn(move || run_loader(load_rx, loader_outbox))
            .expect("the OS can start a thread");
        Self { jobs, loads, latest, outbox, messages }
    }

    /// For helper threads (file dialogs, exports) that report back.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    pub fn load_model(&self, model: ModelArgs) {
        self.send(Job::LoadModel(model));
    }

    /// Starts an analysis that supersedes every earlier one; returns its generation.
    pub fn analyse(&self, prompts: PromptSet, settings: DetectSettings, items: Vec<(ItemId, PathBuf)>) -> u64 {
        let generation = self.latest.fetch_add(1, Ordering::SeqCst) + 1;
        self.send(Job::Analyse(AnalyseJob { generation, prompts, settings, items }));
        generation
    }

    /// Stops the running analysis after its current image.
    pub fn cancel(&self) {
        self.latest.fetch_add(1, Ordering::SeqCst);
    }

    pub fn thumbnails(&self, items: Vec<(ItemId, PathBuf)>) {
        let _ = self.loads.send(LoadJob::Thumbnails(items));
    }

    pub fn picture(&self, id: ItemId, path: PathBuf) {
        let _ = self.loads.send(LoadJob::Picture(id, path));
    }

    #[cfg(test)]
    pub fn hold(&self, until: Receiver<()>) {
        self.send(Job::Hold(until));
    }

    fn send(&self, job: Job) {
        // The engine thread only ends when this sender is dropped.
        let _ = self.jobs.send(job);
    }
}

struct Engine {
    outbox: Outbox,
    latest: Arc<AtomicU64>,
    cache_dir: Option<PathBuf>,
    detector: Option<Result<Detector, String>>,
    /// The last encoded prompt set, reused while it does not change.
    encoded: Option<(PromptSet, ClassPrompts)>,
}

/// Forwards download progress to the UI.
struct DownloadProgress(Outbox);

impl DownloadObserver for DownloadProgress {
    fn progress(&self, file: &str, done: u64, total: u64) {
        self.0.send(Message::Download { file: file.to_owned(), done, total });
    }
}

impl Engine {
    fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::LoadModel(model) => self.load(model),
                Job::Analyse(job) => self.analyse(job),
                #[cfg(test)]
                Job::Hold(until) => {
                    let _ = until.recv();
                }
            }
        }
    }

    fn load(&mut self, model: ModelArgs) {
        let name = model.model.clone().unwrap_or_else(|| clip::DEFAULT_MODEL.to_owned());
        self.outbox.send(Message::ModelLoading { model: name.clone() });
        self.detector = None;
        self.encoded = None;
        let request = ModelRequest {
            model: model.model.clone(),
            arch: model.arch.clone(),
            tokenizer: model.tokenizer.clone(),
            observer: Some(Arc::new(DownloadProgress(self.outbox.clone()))),
        };
        let loaded = (|| -> anyhow::Result<Detector> {
            let files = request.resolve()?;
            let device = clip::device(model.cpu)?;
            let clip = Clip::load(&files, &device)?;
            Ok(Detector::new(clip, &files.identity(), self.cache_dir.as_deref()))
        })();
        match loaded {
            Ok(detector) => {
                self.outbox.send(Message::ModelReady { name });
                self.detector = Some(Ok(detector));
            }
            Err(e) => {
                let error = format!("{e:#}");
                self.outbox.send(Message::ModelFailed { model: name, error: error.clone() });
                self.detector = Some(Err(error));
            }
        }
    }

    fn is_stale(&self, generation: u64) -> bool {
        self.latest.load(Ordering::SeqCst) > generation
    }

    fn analyse(&mut self, job: AnalyseJob) {
        let generation = job.generation;
        let done = |error: Option<String>| Message::AnalysisDone { generation, error };
        if self.is_stale(generation) {
            return self.outbox.send(done(None));
        }
        let detector = match &mut self.detector {
            Some(Ok(detector)) => detector,
            Some(Err(e)) => return self.outbox.send(done(Some(format!("no model: {e}")))),
            None => return self.outbox.send(done(Some("no model loaded".into()))),
        };
        if self.encoded.as_ref().is_none_or(|(set, _)| *set != job.prompts) {
            let start = Instant::now();
            let before = detector.texts_encoded();
            match detector.encode_class(job.prompts.expand()) {
                Ok(class) => {
                    self.outbox.send(Message::PromptsEncoded {
                        generation,
                        encoded: detector.texts_encoded() - before,
                        seconds: start.elapsed().as_secs_f64(),
                    });
                    self.encoded = Some((job.prompts, class));
                }
                Err(e) => {
                    self.encoded = None;
                    return self.outbox.send(done(Some(format!("cannot encode the prompts: {e}"))));
                }
            }
        }
        let (_, class) = self.encoded.as_ref().expect("encoded just above");
        for (id, path) in job.items {
            if self.latest.load(Ordering::SeqCst) > generation {
                break;
            }
            let outcome = clip::open_image(&path)
                .map_err(|e| e.to_string())
                .and_then(|image| detector.detect(&image, class, &job.settings).map_err(|e| e.to_string()))
                .map(|d| Arc::new(Analysis::new(d)));
            self.outbox.send(Message::Analysed { generation, id, outcome });
        }
        self.outbox.send(done(None));
    }
}

enum LoadJob {
    Thumbnails(Vec<(ItemId, PathBuf)>),
    Picture(ItemId, PathBuf),
}

/// Longest side of a list thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 96;

/// Decodes thumbnails in order, but serves a picture request (the image the user
/// selected) before the next thumbnail.
fn run_loader(jobs: Receiver<LoadJob>, outbox: Outbox) {
    let mut queue = std::collections::VecDeque::new();
    loop {
        let job = if queue.is_empty() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else {
            jobs.try_recv().ok()
        };
        match job {
            Some(LoadJob::Thumbnails(items)) => queue.extend(items),
            Some(LoadJob::Picture(id, path)) => outbox.send(Message::Picture { id, outcome: picture(&path) }),
            None => {
                if let Some((id, path)) = queue.pop_front() {
                    outbox.send(Message::Thumbnail { id, outcome: thumbnail(&path) });
                }
            }
        }
    }
}

fn thumbnail(path: &std::path::Path) -> Result<egui::ColorImage, String> {
    let image = clip::open_image(path).map_err(|e| e.to_string())?;
    let small = image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE).to_rgba8();
    Ok(egui::ColorImage::from_rgba_unmultiplied(
        [small.width() as usize, small.height() as usize],
        small.as_raw(),
    ))
}

fn picture(path: &std::path::Path) -> Result<Picture, String> {
    let image = clip::open_image(path).map_err(|e| e.to_string())?.to_rgba8();
    // A mask that cannot be read is left out: the picture itself is still useful.
    let mask = super::files::ground_truth_mask(path)
        .and_then(|m| clip::open_image(&m).ok())
        .map(|m| Arc::new(m.to_luma8()));
    Ok(Picture { image: Arc::new(image), mask })
}
