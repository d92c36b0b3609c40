//! Files from the Hugging Face hub, for every model alfa loads (CLIP, DINOv2).
//!
//! Hub downloads go to the standard Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME`,
//! `~/.cache/huggingface/hub`), so files a Python user already has are reused, and a
//! cached file is used without touching the network. `HF_HUB_OFFLINE=1` forbids the
//! network entirely; `HF_ENDPOINT` points at a hub mirror. Time-outs make a dead
//! network an error, never a hang.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Download progress, for a progress bar in the CLI or the GUI.
pub trait DownloadObserver: Send + Sync {
    /// `done` of `total` bytes (total 0 when unknown) of `file`.
    fn progress(&self, file: &str, done: u64, total: u64);
}


/// `owner/name` with no path-like parts.
pub fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}


pub struct Hub {
    client: hf_hub::HFClientSync,
    /// The hub's base URL (`https://huggingface.co`, or `HF_ENDPOINT`), for messages.
    endpoint: String,
    offline: bool,
    observer: Option<Arc<dyn DownloadObserver>>,
}

impl Hub {
    /// The client; `Err` says why it could not be set up.
    pub fn new(observer: Option<Arc<dyn DownloadObserver>>) -> Result<Self, String> {
        // Timeouts so that a dead network ends in an error, never a hang; no total
        // timeout, since the weights are hundreds of megabytes.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("alfa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let client = hf_hub::HFClient::builder()
            .client(http)
            .retry_max_attempts(2)
            .build()
            .map_err(|e| e.to_string())?;
        let endpoint = client.endpoint().trim_end_matches('/').to_owned();
        let client = hf_hub::HFClientSync::from_inner(client).map_err(|e| e.to_string())?;
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
        Ok(Self {
            client,
            endpoint,
            offline,
            observer,
        })
    }

    fn handle(&self, repo: &str) -> hf_hub::HFRepositorySync<hf_hub::RepoTypeModel> {
        let (owner, name) = repo.split_once('/').unwrap_or(("", repo));
        self.client.model(owner, name)
    }

    /// The file from the cache, never the network: `EntryNotFound` when an earlier
    /// download found that the repo has no such file (a `.no_exist` marker).
    pub fn cached(&self, repo: &str, file: &str) -> hf_hub::HFResult<PathBuf> {
        self.handle(repo).download_file().filename(file).local_files_only(true).send()
    }

    /// The cached file, or a download into the cache. A file the cache knows the repo
    /// lacks (OpenCLIP's repos have no tokenizer.json) is not asked for again.
    pub fn fetch(&self, repo: &str, file: &str) -> Result<PathBuf, HubFailure> {
        let fail = |reason: String, offline: bool| HubFailure {
            repo: repo.to_owned(),
            file: file.to_owned(),
            url: format!("{}/{repo}", self.endpoint),
            reason,
            offline,
        };
        match self.cached(repo, file) {
            Ok(path) => return Ok(path),
            Err(e @ hf_hub::HFError::EntryNotFound { .. }) => return Err(fail(describe_hub_error(&e, &self.endpoint), false)),
            Err(_) => {}
        }
        if self.offline {
            return Err(fail("it is not in the cache and HF_HUB_OFFLINE is set".into(), true));
        }
        let progress = self.observer.clone().map(|observer| {
            hf_hub::progress::Progress::new(ProgressBridge { observer })
        });
        self.handle(repo)
            .download_file()
            .filename(file)
            .maybe_progress(progress)
            .send()
            .map_err(|e| fail(describe_hub_error(&e, &self.endpoint), matches!(e, hf_hub::HFError::Request { .. })))
    }
}

/// The reason of a failed download in words, without the URL (the message has it once):
/// a connection that cannot be made is "no network", not reqwest's "error sending request".
fn describe_hub_error(e: &hf_hub::HFError, endpoint: &str) -> String {
    use hf_hub::HFError;
    let host = reqwest::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| endpoint.to_owned());
    match e {
        HFError::RepoNotFound { .. } => "the repository does not exist (or is private)".into(),
        HFError::EntryNotFound { .. } => "the repository has no such file".into(),
        HFError::Request { source, .. } if source.is_connect() || source.is_timeout() => {
            format!("no network (cannot reach {host})")
        }
        HFError::Request { source, .. } => {
            let mut cause: &dyn std::error::Error = source;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            format!("the connection to {host} failed ({cause})")
        }
        HFError::Http { context }
        | HFError::AuthRequired { context }
        | HFError::Forbidden { context }
        | HFError::RateLimited { context, .. } => {
            let message = context.server_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            format!("{host} answered {}{message}", context.status)
        }
        other => other.to_string(),
    }
}

/// Adapts hf-hub's progress events to our observer.
struct ProgressBridge {
    observer: Arc<dyn DownloadObserver>,
}

impl hf_hub::progress::ProgressHandler for ProgressBridge {
    fn on_progress(&self, event: &hf_hub::progress::ProgressEvent) {
        use hf_hub::progress::{DownloadEvent, ProgressEvent};
        match event {
            ProgressEvent::Download(DownloadEvent::Progress { files }) => {
                for f in files {
                    self.observer.progress(&f.filename, f.bytes_completed, f.total_bytes);
                }
            }
            ProgressEvent::Download(DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            }) => self.observer.progress("", *bytes_completed, *total_bytes),
            _ => {}
        }
    }
}

/// A file the hub could not give: each model's error turns it into a message that says
/// how to work offline with that model.
#[derive(Debug, Clone)]
pub struct HubFailure {
    pub repo: String,
    pub file: String,
    /// The repo's page on the hub (`https://huggingface.co/<repo>`, or under `HF_ENDPOINT`).
    pub url: String,
    /// Why, in words, without the URL.
    pub reason: String,
    /// The hub could not be reached, or `HF_HUB_OFFLINE` forbade it.
    pub offline: bool,
}


/// The message of a failed download of `file` from `url`: offline, what to do (`todo`)
/// comes first, in one short sentence, then what failed, with the URL once; other
/// failures (a misspelt repo) lead with what failed.
pub fn failure_message(file: &str, url: &str, reason: &str, offline: bool, todo: &str) -> String {
    let failed = format!("Could not get {file} from {url}: {reason}.");
    if offline { format!("{todo}\n{failed}") } else { format!("{failed}\n{todo}") }
}
