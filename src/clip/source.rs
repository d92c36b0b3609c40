//! Where a model's files come from: a folder, a weights file, or a Hugging Face repo.
//!
//! Hub downloads go to the standard Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME`,
//! `~/.cache/huggingface/hub`), so files a Python user already has are reused, and a
//! cached file is used without touching the network. `HF_HUB_OFFLINE=1` forbids the
//! network entirely; `HF_ENDPOINT` points at a hub mirror.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ClipError;
use super::config::{DEFAULT_ARCH, OpenClipConfig};
use super::tokenizer::TokenizerSource;

/// ALFA's model: ViT-B-16-plus-240 trained on LAION-400M for 32 epochs.
pub const DEFAULT_MODEL: &str = "timm/vit_base_patch16_plus_240.laion400m_e32";

const CONFIG_FILE: &str = "open_clip_config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
/// Weight files OpenCLIP's hub repos use, in order of preference.
const HUB_WEIGHT_FILES: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];

/// Download progress, for a progress bar in the CLI or the GUI.
pub trait DownloadObserver: Send + Sync {
    /// `done` of `total` bytes (total 0 when unknown) of `file`.
    fn progress(&self, file: &str, done: u64, total: u64);
}

/// How to resolve a `--model` argument.
#[derive(Default, Clone)]
pub struct ModelRequest {
    /// A folder, a weights file, or a hub repo id; `None` for the default model.
    pub model: Option<String>,
    /// Architecture for a bare weights file without `open_clip_config.json` beside it.
    pub arch: Option<String>,
    /// A `tokenizer.json` to use instead of the model's own (`--tokenizer FILE`).
    pub tokenizer: Option<PathBuf>,
    pub observer: Option<Arc<dyn DownloadObserver>>,
}

/// The resolved files of a model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user asked for, for messages and reports.
    pub name: String,
    pub config: OpenClipConfig,
    pub weights: PathBuf,
    /// `--tokenizer FILE`, else the model's own `tokenizer.json`, else CLIP's embedded one.
    pub tokenizer: TokenizerSource,
}

impl ModelFiles {
    /// A key that changes whenever the weights change (cache invalidation).
    pub fn identity(&self) -> String {
        let meta = std::fs::metadata(&self.weights).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let modified = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let path = std::fs::canonicalize(&self.weights).unwrap_or_else(|_| self.weights.clone());
        format!("{}|{len}|{modified}", path.display())
    }
}

impl ModelRequest {
    pub fn resolve(&self) -> Result<ModelFiles, ClipError> {
        let model = self.model.clone().unwrap_or_else(|| DEFAULT_MODEL.to_owned());
        let path = Path::new(&model);
        if path.is_dir() {
            self.from_dir(&model, path)
        } else if path.is_file() {
            self.from_weights_file(&model, path)
        } else if looks_like_repo_id(&model) {
            self.from_hub(&model)
        } else {
            Err(ClipError::ModelNotFound {
                model,
                reason: "it is neither a folder, a file, nor a Hugging Face repo id (owner/name)"
                    .into(),
            })
        }
    }

    fn from_dir(&self, name: &str, dir: &Path) -> Result<ModelFiles, ClipError> {
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.is_file() {
            OpenClipConfig::from_file(&config_path)?
        } else {
            self.builtin_config(name)?
        };
        let weights = HUB_WEIGHT_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .or_else(|| first_weights_file(dir))
            .ok_or_else(|| ClipError::ModelNotFound {
                model: name.to_owned(),
                reason: format!(
                    "the folder has no weights (expected {} or a .safetensors/.bin/.pt file)",
                    HUB_WEIGHT_FILES.join(" or ")
                ),
            })?;
        Ok(ModelFiles {
            name: name.to_owned(),
            config,
            weights,
            tokenizer: self.tokenizer_in(dir),
        })
    }

    fn from_weights_file(&self, name: &str, file: &Path) -> Result<ModelFiles, ClipError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.is_file() && self.arch.is_none() {
            OpenClipConfig::from_file(&config_path)?
        } else {
            self.builtin_config(name)?
        };
        Ok(ModelFiles {
            name: name.to_owned(),
            config,
            weights: file.to_owned(),
            tokenizer: self.tokenizer_in(dir),
        })
    }

    fn builtin_config(&self, name: &str) -> Result<OpenClipConfig, ClipError> {
        let arch = self.arch.as_deref().unwrap_or(DEFAULT_ARCH);
        OpenClipConfig::builtin(arch).ok_or_else(|| ClipError::ModelNotFound {
            model: name.to_owned(),
            reason: format!(
                "no {CONFIG_FILE} beside the weights and `{arch}` is not a known architecture (known: {})",
                OpenClipConfig::BUILTIN_ARCHS.join(", ")
            ),
        })
    }

    fn from_hub(&self, repo: &str) -> Result<ModelFiles, ClipError> {
        let hub = Hub::new(self.observer.clone())?;
        let config_path = hub.fetch(repo, CONFIG_FILE)?;
        let config = OpenClipConfig::from_file(&config_path)?;
        // Prefer safetensors; older repos only have the PyTorch pickle.
        let [preferred, fallback] = HUB_WEIGHT_FILES;
        let weights = hub
            .fetch(repo, preferred)
            .or_else(|_| hub.fetch(repo, fallback))?;
        // OpenCLIP's repos carry no tokenizer.json (the embedded one is theirs); a repo
        // that has one, or an unreachable hub, is not worth failing over.
        let tokenizer = TokenizerSource::or_embedded(
            self.tokenizer.clone().or_else(|| hub.fetch(repo, TOKENIZER_FILE).ok()),
        );
        Ok(ModelFiles {
            name: repo.to_owned(),
            config,
            weights,
            tokenizer,
        })
    }

    /// The tokenizer alone, without the weights and without the network: `--tokenizer`,
    /// else the model folder's (or the weights file's folder's) `tokenizer.json`, or a hub
    /// model's from the Hugging Face cache, else the embedded one.
    pub fn resolve_tokenizer(&self) -> TokenizerSource {
        let model = self.model.as_deref().unwrap_or(DEFAULT_MODEL);
        let path = Path::new(model);
        if path.is_dir() {
            self.tokenizer_in(path)
        } else if path.is_file() {
            self.tokenizer_in(path.parent().unwrap_or(Path::new(".")))
        } else {
            let cached = || Hub::new(None).ok()?.cached(model, TOKENIZER_FILE).ok();
            let cached = || looks_like_repo_id(model).then(cached).flatten();
            TokenizerSource::or_embedded(self.tokenizer.clone().or_else(cached))
        }
    }

    /// `--tokenizer`, else `tokenizer.json` in `dir`, else the embedded one.
    fn tokenizer_in(&self, dir: &Path) -> TokenizerSource {
        let own = dir.join(TOKENIZER_FILE);
        TokenizerSource::or_embedded(self.tokenizer.clone().or_else(|| own.is_file().then_some(own)))
    }
}

/// `owner/name` with no path-like parts.
fn looks_like_repo_id(s: &str) -> bool {
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

fn first_weights_file(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["safetensors", "bin", "pt", "pth"].contains(&e))
        })
        .collect();
    files.sort();
    files.into_iter().next()
}

/// The message of a failed hub download ([`ClipError::Download`]). Offline, what to do
/// comes first, in one short sentence, then what failed, with the URL once; other
/// failures (a misspelt repo) lead with what failed. Only the model's files are ever
/// downloaded: CLIP's tokenizer is built in.
pub fn download_message(repo: &str, file: &str, url: &str, reason: &str, offline: bool) -> String {
    let failed = format!("Could not get {file} from {url}: {reason}.");
    let todo = format!(
        "To work offline, pass `--model FOLDER` holding {CONFIG_FILE} and {} of {repo}.",
        HUB_WEIGHT_FILES[0]
    );
    if offline { format!("{todo}\n{failed}") } else { format!("{failed}\n{todo}") }
}

struct Hub {
    client: hf_hub::HFClientSync,
    /// The hub's base URL (`https://huggingface.co`, or `HF_ENDPOINT`), for messages.
    endpoint: String,
    offline: bool,
    observer: Option<Arc<dyn DownloadObserver>>,
}

impl Hub {
    fn new(observer: Option<Arc<dyn DownloadObserver>>) -> Result<Self, ClipError> {
        let setup = |e: String| ClipError::HubClient(e);
        // Timeouts so that a dead network ends in an error, never a hang; no total
        // timeout, since the weights are hundreds of megabytes.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("alfa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(e.to_string()))?;
        let client = hf_hub::HFClient::builder()
            .client(http)
            .retry_max_attempts(2)
            .build()
            .map_err(|e| setup(e.to_string()))?;
        let endpoint = client.endpoint().trim_end_matches('/').to_owned();
        let client = hf_hub::HFClientSync::from_inner(client).map_err(|e| setup(e.to_string()))?;
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
    fn cached(&self, repo: &str, file: &str) -> hf_hub::HFResult<PathBuf> {
        self.handle(repo).download_file().filename(file).local_files_only(true).send()
    }

    /// The cached file, or a download into the cache. A file the cache knows the repo
    /// lacks (OpenCLIP's repos have no tokenizer.json) is not asked for again.
    fn fetch(&self, repo: &str, file: &str) -> Result<PathBuf, ClipError> {
        let fail = |reason: String, offline: bool| ClipError::Download {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        assert!(looks_like_repo_id(DEFAULT_MODEL));
        assert!(looks_like_repo_id("openai/clip-vit-base-patch32"));
        assert!(!looks_like_repo_id("./models/x"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("/abs"));
        assert!(!looks_like_repo_id("weights.pt"));
        assert!(!looks_like_repo_id("../x"));
    }

    #[test]
    fn download_messages_lead_with_the_way_out_only_offline() {
        let url = "https://huggingface.co/someone/typo";
        let typo = download_message("someone/typo", CONFIG_FILE, url, "the repository does not exist (or is private)", false);
        assert!(typo.starts_with("Could not get open_clip_config.json from https://huggingface.co/someone/typo: the repository"), "{typo}");
        let offline = download_message("someone/typo", CONFIG_FILE, url, "no network (cannot reach huggingface.co)", true);
        assert!(offline.starts_with("To work offline, pass `--model FOLDER`"), "{offline}");
        for message in [&typo, &offline] {
            assert_eq!(message.matches("https://").count(), 1, "{message}");
            // The tokenizer is built in: nothing to fetch, nothing to pass for it.
            assert!(!message.contains("tokenizer"), "{message}");
        }
    }

    /// A folder with the config and the weights, and `tokenizer.json` when `own`.
    fn model_folder(own: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gelu");
        for file in [CONFIG_FILE, HUB_WEIGHT_FILES[0]] {
            std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
        }
        if own {
            std::fs::write(dir.path().join(TOKENIZER_FILE), "{}").unwrap();
        }
        dir
    }

    #[test]
    fn the_tokenizer_is_the_given_file_then_the_models_own_then_the_embedded_one() {
        let given = PathBuf::from("/elsewhere/tokenizer.json");
        for own in [false, true] {
            let dir = model_folder(own);
            let weights = dir.path().join(HUB_WEIGHT_FILES[0]);
            let expected = if own { TokenizerSource::File(dir.path().join(TOKENIZER_FILE)) } else { TokenizerSource::Embedded };
            for model in [dir.path(), weights.as_path()] {
                let request = |tokenizer: Option<PathBuf>| ModelRequest {
                    model: Some(model.display().to_string()),
                    tokenizer,
                    ..Default::default()
                };
                assert_eq!(request(None).resolve().unwrap().tokenizer, expected, "{model:?}");
                assert_eq!(request(None).resolve_tokenizer(), expected, "{model:?}");
                let file = TokenizerSource::File(given.clone());
                assert_eq!(request(Some(given.clone())).resolve().unwrap().tokenizer, file, "{model:?}");
                assert_eq!(request(Some(given.clone())).resolve_tokenizer(), file, "{model:?}");
            }
        }
    }
}
