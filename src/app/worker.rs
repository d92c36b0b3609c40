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

pub use super::path_choice::Pick;
use super::path_choice::Purpose;
use crate::options::ModelArgs;
use crate::clip::{self, Clip, DownloadObserver};
use crate::detect::maps::Grid;
use crate::detect::bank::ReferenceBank;
use crate::detect::references;
pub use crate::detect::threshold::ThresholdFit;
use crate::detect::baselines::build_method;
use crate::detect::{ClassPrompts, ClassSpec, DetectError, DetectSettings, Detection, Detector, Method, MethodKind, Partial, RefsBackbone};
use crate::dinov2::{DinoRequest, Dinov2};
use crate::prompts::PromptSet;
use crate::prompts::generate::Generated;

/// Index of an image in the app's list.
pub type ItemId = usize;

pub enum Job {
    /// CLIP, and the DINOv2 model to load when a DINOv2 bank or AnomalyDINO first
    /// needs it (`None`: ViT-S/14).
    LoadModel(ModelArgs, Option<String>),
    Analyse(AnalyseJob),
    /// One image with a second method, for the compare view.
    Compare(CompareJob),
    Threshold(ThresholdJob),
    /// Keeps the engine thread busy until the sender is dropped: a slow job whose end
    /// the test decides.
    #[cfg(test)]
    Hold(Receiver<()>),
    /// Panics on the engine thread, as a bug would.
    #[cfg(test)]
    Panic,
    /// From now on, the engine waits for a message (or the sender's drop) after each
    /// partial result it sends: the test sees the partial state before the final one.
    #[cfg(test)]
    GatePartials(Receiver<()>),
}

/// What a job was, kept to report it failed after the job itself was consumed.
enum JobKind {
    LoadModel(String),
    Analysis(u64),
    Compare(u64, ItemId),
    Threshold(u64),
    #[cfg(test)]
    Test,
}

impl JobKind {
    fn of(job: &Job) -> Self {
        match job {
            Job::LoadModel(model, _) => JobKind::LoadModel(model.model.clone().unwrap_or_else(|| clip::DEFAULT_MODEL.to_owned())),
            Job::Analyse(job) => JobKind::Analysis(job.generation),
            Job::Compare(job) => JobKind::Compare(job.id, job.item.0),
            Job::Threshold(job) => JobKind::Threshold(job.id),
            #[cfg(test)]
            Job::Hold(_) | Job::Panic | Job::GatePartials(_) => JobKind::Test,
        }
    }

    /// The message that tells the UI this job failed, so nothing waits for it forever.
    fn failed(self, error: String) -> Message {
        match self {
            JobKind::LoadModel(model) => Message::ModelFailed { model, error },
            JobKind::Analysis(generation) => Message::AnalysisDone { generation, error: Some(error) },
            JobKind::Compare(id, item) => Message::Compared { id, item, outcome: Err(error) },
            JobKind::Threshold(id) => Message::ThresholdDone { id, outcome: Err(error) },
            #[cfg(test)]
            JobKind::Test => Message::Notice(error),
        }
    }
}

pub struct AnalyseJob {
    pub generation: u64,
    pub method: MethodKind,
    pub prompts: PromptSet,
    pub settings: DetectSettings,
    /// Normal reference images: few-shot when there are any.
    pub references: Vec<PathBuf>,
    /// In the order to analyse them (the image on screen first).
    pub items: Vec<(ItemId, PathBuf)>,
}

/// The image on screen with a second method (the compare view).
pub struct CompareJob {
    /// From its own counter: a newer compare request supersedes this one.
    pub id: u64,
    pub method: MethodKind,
    pub prompts: PromptSet,
    pub settings: DetectSettings,
    pub references: Vec<PathBuf>,
    pub item: (ItemId, PathBuf),
}

/// Scoring good images to set the threshold at a target false-positive rate.
pub struct ThresholdJob {
    /// From its own counter: a threshold job and an analysis do not supersede each other.
    pub id: u64,
    pub prompts: PromptSet,
    pub settings: DetectSettings,
    pub references: Vec<PathBuf>,
    /// The good images; one that is also a reference is scored against the others.
    pub good: Vec<PathBuf>,
    pub fpr: f64,
    /// Where the good images came from, for the label (`references`, a folder).
    pub source: String,
}

/// One image's result, shared between the list, the viewer and the exports.
pub struct Analysis {
    pub method: MethodKind,
    pub image_score: f32,
    /// ALFA's whole result (its `map` moved to `map`, no copy); a baseline gives
    /// only its score and map.
    pub detection: Option<Detection>,
    pub map: Arc<Grid>,
    /// Smallest and largest map value, for normalisation.
    pub map_range: (f32, f32),
}

impl Analysis {
    fn alfa(mut detection: Detection) -> Self {
        let map = std::mem::replace(&mut detection.map, Grid::new(0, 0, Vec::new()));
        Self::of(MethodKind::Alfa, detection.image_score, Some(detection), map)
    }

    fn of(method: MethodKind, image_score: f32, detection: Option<Detection>, map: Grid) -> Self {
        let map_range = map
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Self { method, image_score, detection, map: Arc::new(map), map_range }
    }
}

pub enum Message {
    ModelLoading { model: String },
    Download { file: String, done: u64, total: u64 },
    /// `grid`: the model's patch grid, which bounds the window scales.
    /// `stamp`: the model's identity in recipes (its weights' hash); `None` when the
    /// weights could not be hashed (a recipe then cannot be written).
    ModelReady { name: String, precision: clip::Precision, grid: usize, stamp: Option<crate::recipe::ModelStamp> },
    ModelFailed { model: String, error: String },
    /// The class's prompts are encoded; `encoded` texts went through the text tower.
    PromptsEncoded { generation: u64, encoded: usize, seconds: f64 },
    /// What the engine knows of image `id` before its result (ALFA only).
    Partial { generation: u64, id: ItemId, partial: Partial },
    Analysed { generation: u64, id: ItemId, outcome: Result<Arc<Analysis>, String> },
    /// The compare view's second result for image `item`.
    Compared { id: u64, item: ItemId, outcome: Result<Arc<Analysis>, String> },
    /// An analysis ended (finished, cancelled, or failed before any image).
    AnalysisDone { generation: u64, error: Option<String> },
    /// Reference features: `done` of `total` images (of an analysis or a threshold job).
    References { task: Task, done: usize, total: usize },
    /// The bank is ready: `used` references, the others could not be read.
    ReferencesReady { task: Task, used: usize, skipped: Vec<(PathBuf, String)> },
    ThresholdScored { id: u64, done: usize, total: usize },
    ThresholdDone { id: u64, outcome: Result<ThresholdFit, String> },
    Thumbnail { id: ItemId, outcome: Result<Thumbnail, String> },
    Picture { id: ItemId, outcome: Result<Picture, String> },
    /// "Generate more…": `done` of `total` LLM answers arrived.
    LlmAnswered { id: u64, done: usize, total: usize },
    /// "Generate more…" ended: the new prompts and their provenance, or why not.
    Generated { id: u64, outcome: Result<(Generated, String), String> },
    /// A region of an image (the nearest reference window), keyed by the asker.
    Crop { key: String, outcome: Result<egui::ColorImage, String> },
    /// Images were copied into a class's reference folder (the unreadable ones refused).
    ReferencesCopied { outcome: Result<references::ReferencesAdded, String> },
    /// A file dialog's choice.
    Picked(Pick),
    /// The system file dialog returned at once, without a choice: it cannot open here.
    DialogFailed(Purpose),
    /// A line for the status bar (exports).
    Notice(String),
}

/// Which engine job a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Analysis(u64),
    Threshold(u64),
    Compare(u64),
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
    latest_threshold: Arc<AtomicU64>,
    latest_compare: Arc<AtomicU64>,
    outbox: Outbox,
    pub messages: Receiver<Message>,
}

impl Workers {
    /// `cache_dir` holds the text-feature cache (`None`: memory only).
    pub fn spawn(ctx: &egui::Context, cache_dir: Option<PathBuf>) -> Self {
        let (tx, messages) = crossbeam_channel::unbounded();
        let outbox = Outbox { tx, ctx: ctx.clone() };
        let latest = Arc::new(AtomicU64::new(0));
        let latest_threshold = Arc::new(AtomicU64::new(0));
        let latest_compare = Arc::new(AtomicU64::new(0));
        let (jobs, job_rx) = crossbeam_channel::unbounded();
        let engine = Engine {
            outbox: outbox.clone(),
            latest: Latest { analysis: latest.clone(), threshold: latest_threshold.clone(), compare: latest_compare.clone() },
            cache_dir,
            detector: None,
            encoded: None,
            bank: None,
            baselines: Vec::new(),
            dinov2_model: None,
            cpu: false,
            #[cfg(test)]
            partial_gate: None,
        };
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
        Self { jobs, loads, latest, latest_threshold, latest_compare, outbox, messages }
    }

    /// For helper threads (file dialogs, exports) that report back.
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    pub fn load_model(&self, model: ModelArgs, dinov2: Option<String>) {
        self.send(Job::LoadModel(model, dinov2));
    }

    /// Starts an analysis that supersedes every earlier one; returns its generation.
    pub fn analyse(
        &self,
        method: MethodKind,
        prompts: PromptSet,
        settings: DetectSettings,
        references: Vec<PathBuf>,
        items: Vec<(ItemId, PathBuf)>,
    ) -> u64 {
        let generation = self.latest.fetch_add(1, Ordering::SeqCst) + 1;
        self.send(Job::Analyse(AnalyseJob { generation, method, prompts, settings, references, items }));
        generation
    }

    /// Scores one image with a second method (`job.id` is set here), superseding an
    /// earlier compare request; returns its id.
    pub fn compare(&self, mut job: CompareJob) -> u64 {
        job.id = self.latest_compare.fetch_add(1, Ordering::SeqCst) + 1;
        let id = job.id;
        self.send(Job::Compare(job));
        id
    }

    /// Stops the running analysis after its current image (or reference).
    pub fn cancel(&self) {
        self.latest.fetch_add(1, Ordering::SeqCst);
    }

    /// Starts scoring good images for a threshold (`job.id` is set here), superseding
    /// an earlier threshold job; returns its id.
    pub fn threshold(&self, mut job: ThresholdJob) -> u64 {
        job.id = self.latest_threshold.fetch_add(1, Ordering::SeqCst) + 1;
        let id = job.id;
        self.send(Job::Threshold(job));
        id
    }

    pub fn cancel_threshold(&self) {
        self.latest_threshold.fetch_add(1, Ordering::SeqCst);
    }

    /// Decodes `region` (`[x0, y0, x1, y1)`) of `path` for display under `key`.
    pub fn crop(&self, key: String, path: PathBuf, region: [u32; 4]) {
        let _ = self.loads.send(LoadJob::Crop { key, path, region });
    }

    /// Copies images into a reference folder off the UI thread (folders of large files).
    pub fn copy_references(&self, dir: PathBuf, images: Vec<PathBuf>) {
        let _ = self.loads.send(LoadJob::CopyReferences { dir, images });
    }

    pub fn thumbnails(&self, items: Vec<(ItemId, PathBuf)>) {
        let _ = self.loads.send(LoadJob::Thumbnails(items));
    }

    /// Decodes the picture to show now; it supersedes a picture asked for earlier
    /// and not decoded yet (keys held down skip what is passed).
    pub fn picture(&self, id: ItemId, path: PathBuf) {
        let _ = self.loads.send(LoadJob::Picture(id, path));
    }

    /// Decodes pictures likely to be shown next (the list's neighbours) after the
    /// one on screen and before thumbnails; replaces an earlier prefetch.
    pub fn prefetch(&self, items: Vec<(ItemId, PathBuf)>) {
        let _ = self.loads.send(LoadJob::Prefetch(items));
    }

    #[cfg(test)]
    pub fn hold(&self, until: Receiver<()>) {
        self.send(Job::Hold(until));
    }

    #[cfg(test)]
    pub fn panic_engine(&self) {
        self.send(Job::Panic);
    }

    #[cfg(test)]
    pub fn gate_partials(&self, gate: Receiver<()>) {
        self.send(Job::GatePartials(gate));
    }

    fn send(&self, job: Job) {
        // The engine thread only ends when this sender is dropped.
        let _ = self.jobs.send(job);
    }
}

/// The newest analysis generation and threshold job id: older work stops.
struct Latest {
    analysis: Arc<AtomicU64>,
    threshold: Arc<AtomicU64>,
    compare: Arc<AtomicU64>,
}

impl Latest {
    fn superseded(&self, task: Task) -> bool {
        match task {
            Task::Analysis(generation) => self.analysis.load(Ordering::SeqCst) > generation,
            Task::Threshold(id) => self.threshold.load(Ordering::SeqCst) > id,
            Task::Compare(id) => self.compare.load(Ordering::SeqCst) > id,
        }
    }
}

struct Engine {
    outbox: Outbox,
    latest: Latest,
    cache_dir: Option<PathBuf>,
    detector: Option<Result<Detector, String>>,
    /// The last encoded prompt set, reused while it does not change.
    encoded: Option<(PromptSet, ClassPrompts)>,
    /// The last reference bank, reused while its files and settings do not change.
    bank: Option<CachedBank>,
    /// Baselines built so far on the same model (at most one per method).
    baselines: Vec<BaselineSlot>,
    /// The DINOv2 model the last load named (`None`: ViT-S/14), loaded on first use.
    dinov2_model: Option<String>,
    /// The device choice of the last load, for DINOv2.
    cpu: bool,
    #[cfg(test)]
    partial_gate: Option<Receiver<()>>,
}

/// A baseline, and the prompts and references it is prepared with.
struct BaselineSlot {
    kind: MethodKind,
    settings: DetectSettings,
    method: Box<dyn Method>,
    prepared: Option<(PromptSet, Vec<PathBuf>)>,
}

struct CachedBank {
    files: Vec<PathBuf>,
    scales: Vec<usize>,
    window_mode: crate::detect::WindowMode,
    backbone: RefsBackbone,
    /// `None`: no reference could be read.
    bank: Option<ReferenceBank>,
}

impl CachedBank {
    fn fits(&self, files: &[PathBuf], settings: &DetectSettings) -> bool {
        self.files == files
            && self.scales == settings.scales
            && self.window_mode == settings.window_mode
            && self.backbone == settings.refs_backbone
    }
}

/// Forwards download progress to the UI.
struct DownloadProgress(Outbox);

impl DownloadObserver for DownloadProgress {
    fn progress(&self, file: &str, done: u64, total: u64) {
        self.0.send(Message::Download { file: file.to_owned(), done, total });
    }
}

impl Engine {
    /// Runs jobs until the UI is gone. A panic in a job (a bug) does not end the
    /// thread: the job is reported as failed, the caches it may have left half-made
    /// are dropped, and the next job runs on a clean engine.
    fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let kind = JobKind::of(&job);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_job(job)));
            if let Err(payload) = outcome {
                self.encoded = None;
                self.bank = None;
                self.baselines.clear();
                let error = format!("the engine failed ({}) and was restarted", panic_text(payload.as_ref()));
                self.outbox.send(kind.failed(error));
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        match job {
            Job::LoadModel(model, dinov2) => self.load(model, dinov2),
            Job::Analyse(job) => self.analyse(job),
            Job::Compare(job) => self.compare(job),
            Job::Threshold(job) => self.threshold(job),
            #[cfg(test)]
            Job::Hold(until) => {
                let _ = until.recv();
            }
            #[cfg(test)]
            Job::Panic => panic!("a test asked the engine to panic"),
            #[cfg(test)]
            Job::GatePartials(gate) => self.partial_gate = Some(gate),
        }
    }

    fn load(&mut self, model: ModelArgs, dinov2: Option<String>) {
        self.dinov2_model = dinov2;
        self.cpu = model.cpu;
        let name = model.model.clone().unwrap_or_else(|| clip::DEFAULT_MODEL.to_owned());
        self.outbox.send(Message::ModelLoading { model: name.clone() });
        self.detector = None;
        self.encoded = None;
        self.bank = None;
        self.baselines.clear();
        let request = model.request(Some(Arc::new(DownloadProgress(self.outbox.clone()))));
        let loaded = (|| -> anyhow::Result<(Detector, Option<crate::recipe::ModelStamp>)> {
            let files = request.resolve()?;
            let kernels = clip::Kernels::from_env()?;
            let device = clip::device(model.cpu)?;
            let clip = Clip::load(&files, &device, model.precision, kernels)?;
            // Hashed once per weights file (cached): what recipes know the model by.
            let stamp = match crate::recipe::ModelStamp::of(&files, &name, model.precision, self.cache_dir.as_deref()) {
                Ok(stamp) => Some(stamp),
                Err(e) => {
                    self.outbox.send(Message::Notice(format!("cannot hash the weights {}: {e}", files.weights.display())));
                    None
                }
            };
            Ok((Detector::new(clip, &files.identity(), self.cache_dir.as_deref()), stamp))
        })();
        match loaded {
            Ok((detector, stamp)) => {
                let grid = detector.clip.model.vision.grid();
                self.outbox.send(Message::ModelReady { name, precision: model.precision, grid, stamp });
                self.detector = Some(Ok(detector));
            }
            Err(e) => {
                let error = format!("{e:#}");
                self.outbox.send(Message::ModelFailed { model: name, error: error.clone() });
                self.detector = Some(Err(error));
            }
        }
    }

    fn is_stale(&self, task: Task) -> bool {
        self.latest.superseded(task)
    }

    /// The detector with `prompts` encoded (reused while they do not change) and the
    /// bank of `references` built (likewise); `Err` says why not.
    fn prepare(
        &mut self,
        task: Task,
        prompts: &PromptSet,
        settings: &DetectSettings,
        references: &[PathBuf],
    ) -> Result<(), String> {
        if settings.refs_backbone == RefsBackbone::Dinov2 && !references.is_empty() {
            self.ensure_dinov2()?;
        }
        let detector = match &mut self.detector {
            Some(Ok(detector)) => detector,
            Some(Err(e)) => return Err(format!("no model: {e}")),
            None => return Err("no model loaded".into()),
        };
        if self.encoded.as_ref().is_none_or(|(set, _)| set != prompts) {
            let start = Instant::now();
            let before = detector.texts_encoded();
            match detector.encode_class(prompts.expand()) {
                Ok(class) => {
                    if let Task::Analysis(generation) = task {
                        self.outbox.send(Message::PromptsEncoded {
                            generation,
                            encoded: detector.texts_encoded() - before,
                            seconds: start.elapsed().as_secs_f64(),
                        });
                    }
                    self.encoded = Some((prompts.clone(), class));
                }
                Err(e) => {
                    self.encoded = None;
                    return Err(format!("cannot encode the prompts: {e}"));
                }
            }
        }
        if references.is_empty() || self.bank.as_ref().is_some_and(|b| b.fits(references, settings)) {
            return Ok(());
        }
        self.bank = None;
        let (outbox, latest) = (&self.outbox, &self.latest);
        let cancelled = || latest.superseded(task);
        let progress = |done, total| outbox.send(Message::References { task, done, total });
        let build = detector
            .build_reference_bank_unless(references, settings, progress, &cancelled)
            .map_err(|e| match e {
                DetectError::Cancelled => e.to_string(),
                e => format!("cannot build the reference bank: {e}"),
            })?;
        let used = build.bank.as_ref().map_or(0, |b| b.files.len());
        self.outbox.send(Message::ReferencesReady { task, used, skipped: build.skipped });
        self.bank = Some(CachedBank {
            files: references.to_vec(),
            scales: settings.scales.clone(),
            window_mode: settings.window_mode,
            backbone: settings.refs_backbone,
            bank: build.bank,
        });
        Ok(())
    }

    /// Loads DINOv2 into the detector, once per loaded model (downloading with the
    /// progress CLIP's download shows).
    fn ensure_dinov2(&mut self) -> Result<(), String> {
        match &self.detector {
            Some(Ok(detector)) if detector.dinov2().is_some() => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("no model: {e}")),
            None => return Err("no model loaded".into()),
        }
        let request = DinoRequest { model: self.dinov2_model.clone(), observer: Some(Arc::new(DownloadProgress(self.outbox.clone()))) };
        let loaded = request.resolve().and_then(|files| Dinov2::load(&files, &clip::device(self.cpu)?, clip::Kernels::from_env()?));
        let dino = loaded.map_err(|e| format!("cannot load DINOv2: {e}"))?;
        if let Some(Ok(detector)) = self.detector.take() {
            self.detector = Some(Ok(detector.with_dinov2(Arc::new(dino))));
        }
        Ok(())
    }

    /// The detector, the encoded prompts and the bank `prepare` made.
    fn prepared(&self, references: &[PathBuf]) -> (&Detector, &ClassPrompts, Option<&ReferenceBank>) {
        let Some(Ok(detector)) = &self.detector else { unreachable!("prepare checked the detector") };
        let (_, class) = self.encoded.as_ref().expect("prepare encoded the prompts");
        let bank = if references.is_empty() { None } else { self.bank.as_ref().and_then(|b| b.bank.as_ref()) };
        (detector, class, bank)
    }

    fn analyse(&mut self, job: AnalyseJob) {
        let generation = job.generation;
        let task = Task::Analysis(generation);
        let done = |error: Option<String>| Message::AnalysisDone { generation, error };
        if self.is_stale(task) {
            return self.outbox.send(done(None));
        }
        if let Err(e) = self.prepare_method(task, job.method, &job.prompts, &job.settings, &job.references) {
            let error = (!self.is_stale(task)).then_some(e);
            return self.outbox.send(done(error));
        }
        for (id, path) in job.items {
            if self.is_stale(task) {
                break;
            }
            // S_G and the coarser maps go to the window as soon as they exist.
            let outbox = self.outbox.clone();
            #[cfg(test)]
            let gate = self.partial_gate.clone();
            let mut progress = |partial| {
                outbox.send(Message::Partial { generation, id, partial });
                #[cfg(test)]
                if let Some(gate) = &gate {
                    let _ = gate.recv();
                }
            };
            let outcome = self.score_prepared(job.method, &job.references, &job.settings, &path, Some(&mut progress));
            self.outbox.send(Message::Analysed { generation, id, outcome });
        }
        self.outbox.send(done(None));
    }

    fn compare(&mut self, job: CompareJob) {
        let task = Task::Compare(job.id);
        if self.is_stale(task) {
            return;
        }
        let outcome = self
            .prepare_method(task, job.method, &job.prompts, &job.settings, &job.references)
            .and_then(|()| self.score_prepared(job.method, &job.references, &job.settings, &job.item.1, None));
        if !self.is_stale(task) {
            self.outbox.send(Message::Compared { id: job.id, item: job.item.0, outcome });
        }
    }

    /// ALFA's prompts and bank, or a baseline built and prepared, for `method`.
    fn prepare_method(
        &mut self,
        task: Task,
        method: MethodKind,
        prompts: &PromptSet,
        settings: &DetectSettings,
        references: &[PathBuf],
    ) -> Result<(), String> {
        if method == MethodKind::Alfa {
            return self.prepare(task, prompts, settings, references);
        }
        if method == MethodKind::Anomalydino {
            self.ensure_dinov2()?;
        }
        let detector = match &self.detector {
            Some(Ok(detector)) => detector,
            Some(Err(e)) => return Err(format!("no model: {e}")),
            None => return Err("no model loaded".into()),
        };
        let index = match self.baselines.iter().position(|b| b.kind == method && b.settings == *settings) {
            Some(index) => index,
            None => {
                self.baselines.retain(|b| b.kind != method);
                let built = build_method(method, detector.share(), settings.clone()).map_err(|e| e.to_string())?;
                self.baselines.push(BaselineSlot { kind: method, settings: settings.clone(), method: built, prepared: None });
                self.baselines.len() - 1
            }
        };
        let slot = &mut self.baselines[index];
        // Only WinCLIP(+) and AnomalyDINO use references; the others are zero-shot.
        let few_shot = matches!(method, MethodKind::Winclip | MethodKind::Anomalydino);
        let references = if few_shot { references.to_vec() } else { Vec::new() };
        if slot.prepared.as_ref().is_some_and(|(p, r)| p == prompts && *r == references) {
            return Ok(());
        }
        let images: Vec<image::DynamicImage> = references.iter().filter_map(|r| clip::open_image(r).ok()).collect();
        let spec = ClassSpec { id: prompts.class.id.clone(), name: prompts.class.name.clone(), prompts: prompts.expand() };
        slot.prepared = None;
        slot.method.prepare(&spec, &images).map_err(|e| format!("cannot prepare {method:?}: {e}"))?;
        slot.prepared = Some((prompts.clone(), references));
        Ok(())
    }

    /// One image through the method `prepare_method` prepared.
    fn score_prepared(
        &mut self,
        method: MethodKind,
        references: &[PathBuf],
        settings: &DetectSettings,
        path: &std::path::Path,
        progress: Option<&mut dyn FnMut(Partial)>,
    ) -> Result<Arc<Analysis>, String> {
        let image = clip::open_image(path).map_err(|e| e.to_string())?;
        // A bug on one image fails that image, not the rest of the list.
        let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Analysis, DetectError> {
            if method == MethodKind::Alfa {
                let (detector, class, bank) = self.prepared(references);
                return Ok(Analysis::alfa(detector.detect_progressive(&image, class, bank, settings, progress)?));
            }
            let slot = self.baselines.iter_mut().find(|b| b.kind == method).ok_or(DetectError::NotPrepared)?;
            let scored = slot.method.score(&image)?;
            Ok(Analysis::of(method, scored.image_score, None, scored.map))
        }))
        .map_err(|payload| format!("the engine failed on this image ({})", panic_text(payload.as_ref())))?;
        scored.map(Arc::new).map_err(|e| e.to_string())
    }

    fn threshold(&mut self, job: ThresholdJob) {
        let id = job.id;
        let task = Task::Threshold(id);
        if self.is_stale(task) {
            return;
        }
        let outcome = self.prepare(task, &job.prompts, &job.settings, &job.references).and_then(|()| {
            let (detector, class, bank) = self.prepared(&job.references);
            let (outbox, latest) = (&self.outbox, &self.latest);
            let mut progress = |done, total| outbox.send(Message::ThresholdScored { id, done, total });
            let good = detector
                .score_good_images(&job.good, class, bank, &job.settings, &mut progress, &|| latest.superseded(task))
                .map_err(|e| e.to_string())?;
            crate::detect::threshold::fit_thresholds(good, job.fpr, &job.source).map_err(|e| e.to_string())
        });
        if !self.is_stale(task) {
            self.outbox.send(Message::ThresholdDone { id, outcome });
        }
    }
}

/// `work`, with a panic (a decoder bug on a strange file) turned into that file's
/// error: the loader thread goes on with the next file.
fn guarded<T>(work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .unwrap_or_else(|payload| Err(format!("cannot decode this file ({})", panic_text(payload.as_ref()))))
}

/// The text a panic was raised with.
pub(super) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

enum LoadJob {
    Thumbnails(Vec<(ItemId, PathBuf)>),
    Picture(ItemId, PathBuf),
    Prefetch(Vec<(ItemId, PathBuf)>),
    Crop { key: String, path: PathBuf, region: [u32; 4] },
    CopyReferences { dir: PathBuf, images: Vec<PathBuf> },
}

/// Longest side of a list thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 96;

/// What the loader has to do, most urgent first: the picture on screen (only the
/// newest request), then its neighbours, then thumbnails in list order.
#[derive(Default)]
struct LoadQueue {
    picture: Option<(ItemId, PathBuf)>,
    prefetch: std::collections::VecDeque<(ItemId, PathBuf)>,
    thumbnails: std::collections::VecDeque<(ItemId, PathBuf)>,
}

impl LoadQueue {
    fn is_empty(&self) -> bool {
        self.picture.is_none() && self.prefetch.is_empty() && self.thumbnails.is_empty()
    }

    fn next(&mut self) -> Option<(ItemId, PathBuf, bool)> {
        if let Some((id, path)) = self.picture.take().or_else(|| self.prefetch.pop_front()) {
            return Some((id, path, true));
        }
        self.thumbnails.pop_front().map(|(id, path)| (id, path, false))
    }
}

fn run_loader(jobs: Receiver<LoadJob>, outbox: Outbox) {
    let mut queue = LoadQueue::default();
    loop {
        if queue.is_empty() {
            match jobs.recv() {
                Ok(job) => take_load_job(job, &mut queue, &outbox),
                Err(_) => return,
            }
        }
        // Everything asked so far, so a newer picture request replaces older ones.
        while let Ok(job) = jobs.try_recv() {
            take_load_job(job, &mut queue, &outbox);
        }
        match queue.next() {
            Some((id, path, true)) => outbox.send(Message::Picture { id, outcome: guarded(|| picture(&path)) }),
            Some((id, path, false)) => outbox.send(Message::Thumbnail { id, outcome: guarded(|| thumbnail(&path)) }),
            None => {}
        }
    }
}

/// Queues a decode, or does a quick job (crops, copies) at once.
fn take_load_job(job: LoadJob, queue: &mut LoadQueue, outbox: &Outbox) {
    match job {
        LoadJob::Thumbnails(items) => queue.thumbnails.extend(items),
        LoadJob::Picture(id, path) => {
            queue.prefetch.retain(|(other, _)| *other != id);
            queue.picture = Some((id, path));
        }
        LoadJob::Prefetch(items) => queue.prefetch = items.into(),
        LoadJob::Crop { key, path, region } => outbox.send(Message::Crop { key, outcome: guarded(|| crop(&path, region)) }),
        LoadJob::CopyReferences { dir, images } => {
            let outcome = references::add_readable_references(&dir, &images).map_err(|e| e.to_string());
            outbox.send(Message::ReferencesCopied { outcome });
        }
    }
}

/// A list thumbnail, which the viewer also shows scaled up until the picture is decoded.
#[derive(Clone)]
pub struct Thumbnail {
    pub color: egui::ColorImage,
    pub pixels: Arc<RgbaImage>,
    /// The full picture's size.
    pub size: [u32; 2],
}

fn thumbnail(path: &std::path::Path) -> Result<Thumbnail, String> {
    let image = clip::open_image(path).map_err(|e| e.to_string())?;
    let small = image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE);
    Ok(Thumbnail { color: color_image(&small), pixels: Arc::new(small.to_rgba8()), size: [image.width(), image.height()] })
}

fn crop(path: &std::path::Path, [x0, y0, x1, y1]: [u32; 4]) -> Result<egui::ColorImage, String> {
    let image = clip::open_image(path).map_err(|e| e.to_string())?;
    Ok(color_image(&image.crop_imm(x0, y0, x1.saturating_sub(x0), y1.saturating_sub(y0))))
}

/// An image as egui's texture data.
pub fn color_image(image: &image::DynamicImage) -> egui::ColorImage {
    let rgba = image.to_rgba8();
    egui::ColorImage::from_rgba_unmultiplied([rgba.width() as usize, rgba.height() as usize], rgba.as_raw())
}

fn picture(path: &std::path::Path) -> Result<Picture, String> {
    let image = clip::open_image(path).map_err(|e| e.to_string())?.to_rgba8();
    // A mask that cannot be read is left out: the picture itself is still useful.
    let mask = super::files::ground_truth_mask(path)
        .and_then(|m| clip::open_image(&m).ok())
        .map(|m| Arc::new(m.to_luma8()));
    Ok(Picture { image: Arc::new(image), mask })
}
