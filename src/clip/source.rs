//! Where a model's files come from: a folder, a weights file, or a Hugging Face repo
//! (through [`crate::hub`]: the standard cache, `HF_HUB_OFFLINE`, `HF_ENDPOINT`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ClipError;
pub use crate::hub::DownloadObserver;
use crate::hub::{Hub, HubFailure, looks_like_repo_id};
use super::config::{DEFAULT_ARCH, OpenClipConfig};
use super::tokenizer::TokenizerSource;

/// ALFA's model: ViT-B-16-plus-240 trained on LAION-400M for 32 epochs.
pub const DEFAULT_MODEL: &str = "timm/vit_base_patch16_plus_240.laion400m_e32";

const CONFIG_FILE: &str = "open_clip_config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
/// Weight files OpenCLIP's hub repos use, in order of preference.
const HUB_WEIGHT_FILES: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];

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
        crate::files::file_identity(&self.weights)
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
        let hub = Hub::new(self.observer.clone()).map_err(ClipError::HubClient)?;
        let config_path = hub.fetch(repo, CONFIG_FILE)?;
        let config = OpenClipConfig::from_file(&config_path)?;
        // Prefer safetensors; older repos only have the PyTorch pickle.
        let [preferred, fallback] = HUB_WEIGHT_FILES;
        let weights = hub.fetch(repo, preferred).or_else(|_| hub.fetch(repo, fallback))?;
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

impl From<HubFailure> for ClipError {
    fn from(f: HubFailure) -> Self {
        ClipError::Download { repo: f.repo, file: f.file, url: f.url, reason: f.reason, offline: f.offline }
    }
}

/// The message of a failed hub download ([`ClipError::Download`]). Offline, what to do
/// comes first, in one short sentence, then what failed, with the URL once; other
/// failures (a misspelt repo) lead with what failed. Only the model's files are ever
/// downloaded: CLIP's tokenizer is built in.
pub fn download_message(repo: &str, file: &str, url: &str, reason: &str, offline: bool) -> String {
    let todo = format!(
        "To work offline, pass `--model FOLDER` holding {CONFIG_FILE} and {} of {repo}.",
        HUB_WEIGHT_FILES[0]
    );
    crate::hub::failure_message(file, url, reason, offline, &todo)
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
