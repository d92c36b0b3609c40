//! CLIP's tokenizer built into the binary, and which tokenizer a model uses:
//! `--tokenizer FILE`, else the model's own tokenizer.json, else the embedded one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use alfa::clip::{ClipTokenizer, ModelRequest, TokenizerSource};
use common::{fixtures, shared_tokenizer};

fn texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "a photo of a bottle",
        "A flawless METAL_NUT, close-up!",
        "R&amp;D's pcb1 &lt;scratch&gt;  on   the  edge",
        "Ümlaut café — a 3.5 mm crack (zoomed 10x)",
        "日本語のテキスト",
    ]
    .map(str::to_owned)
    .into();
    texts.push(vec!["a very smooth round rim"; 20].join(" and ")); // over CLIP's 77 tokens
    texts
}

#[test]
fn the_embedded_tokenizer_is_the_shared_file() {
    let embedded = alfa::clip::tokenizer::embedded_json().unwrap();
    let file = std::fs::read(shared_tokenizer()).unwrap();
    // Not assert_eq!: a failure would print megabytes.
    assert!(embedded == file, "the embedded tokenizer.json ({} bytes) differs from {} ({} bytes)", embedded.len(), shared_tokenizer().display(), file.len());
}

#[test]
fn the_embedded_tokenizer_tokenizes_as_the_file() {
    let embedded = ClipTokenizer::load(&TokenizerSource::Embedded, 77).unwrap();
    let file = ClipTokenizer::from_file(&shared_tokenizer(), 77).unwrap();
    for text in texts() {
        assert_eq!(embedded.encode(&text).unwrap(), file.encode(&text).unwrap(), "{text}");
        assert_eq!(embedded.token_count(&text).unwrap(), file.token_count(&text).unwrap(), "{text}");
    }
    let ids = embedded.encode("a photo of a bottle").unwrap();
    assert_eq!(ids, [49406, 320, 1125, 539, 320, 5392, 49407]);
}

#[test]
fn messages_name_the_tokenizer() {
    assert_eq!(TokenizerSource::Embedded.to_string(), "the embedded CLIP tokenizer");
    let missing = PathBuf::from("/no/such/tokenizer.json");
    let Err(e) = ClipTokenizer::from_file(&missing, 77) else { panic!("a missing file loads") };
    assert!(e.to_string().starts_with("cannot load tokenizer /no/such/tokenizer.json: "), "{e}");
}

/// A model folder (tiny-gelu) whose tokenizer.json is CLIP's with the ids of
/// `bottle</w>` and `photo</w>` swapped, so its ids differ from CLIP's.
fn folder_with_own_tokenizer() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-gelu").join(f), tmp.path().join(f)).unwrap();
    }
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(shared_tokenizer()).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let bottle = vocab["bottle</w>"].take();
    let photo = std::mem::replace(&mut vocab["photo</w>"], bottle);
    vocab["bottle</w>"] = photo;
    std::fs::write(tmp.path().join("tokenizer.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    tmp
}

#[test]
fn a_models_own_tokenizer_wins_and_tokenizer_file_wins_over_it() {
    let tmp = folder_with_own_tokenizer();
    let request = |tokenizer: Option<PathBuf>| ModelRequest {
        model: Some(tmp.path().display().to_string()),
        tokenizer,
        ..Default::default()
    };
    let own = request(None).resolve().unwrap().tokenizer;
    assert_eq!(own, TokenizerSource::File(tmp.path().join("tokenizer.json")));
    assert_eq!(request(None).resolve_tokenizer(), own);
    let ids = ClipTokenizer::load(&own, 77).unwrap().encode("a photo of a bottle").unwrap();
    assert_eq!(ids, [49406, 320, 5392, 539, 320, 1125, 49407], "the folder's own ids");

    let given = request(Some(shared_tokenizer())).resolve().unwrap().tokenizer;
    assert_eq!(given, TokenizerSource::File(shared_tokenizer()));
    let ids = ClipTokenizer::load(&given, 77).unwrap().encode("a photo of a bottle").unwrap();
    assert_eq!(ids, [49406, 320, 1125, 539, 320, 5392, 49407], "CLIP's ids");

    // The same through the command line: the folder's tokenizer changes the embedding.
    let embed = |extra: &[&Path]| {
        let out = Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(["embed", "--text", "a photo of a bottle", "--model"])
            .arg(tmp.path())
            .args(extra.iter().flat_map(|file| [Path::new("--tokenizer"), file]))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_ne!(embed(&[]), embed(&[&shared_tokenizer()]));
}
