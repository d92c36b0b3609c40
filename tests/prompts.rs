//! The shipped prompt sets and how prompt files are found and checked.

use std::path::Path;

use alfa::prompts::{PromptError, PromptSet, PromptSource, PromptStore};

const MVTEC: [&str; 15] = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
    "tile", "toothbrush", "transistor", "wood", "zipper",
];
const VISA: [&str; 12] = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
    "pcb4", "pipe_fryum",
];

#[test]
fn every_benchmark_class_ships_a_complete_set() {
    let store = PromptStore { recipes: None };
    for class in MVTEC.iter().chain(&VISA) {
        let resolved = store.resolve(class).unwrap();
        assert!(!resolved.generic_fallback, "{class}");
        let set = resolved.set;
        assert_eq!(set.class.id, *class);
        let p = set.expand();
        for (label, prompts, prefix) in [("normal", &p.normal, "A normal image of"), ("abnormal", &p.abnormal, "An abnormal image of")] {
            let templates = prompts.iter().filter(|p| p.source == PromptSource::Template).count();
            let llm: Vec<_> = prompts.iter().filter(|p| p.source == PromptSource::Llm).collect();
            assert_eq!(templates, 72, "{class} {label} template prompts");
            assert!((60..=90).contains(&llm.len()), "{class} {label}: {} LLM prompts", llm.len());
            assert!(llm.iter().all(|p| p.text.starts_with(prefix)), "{class} {label} prefix");
            assert!(prompts.iter().all(|p| !p.text.contains('{')), "{class}: unfilled placeholder");
            assert!(prompts.iter().any(|p| p.text.contains(&set.class.name)), "{class}: name not filled in");
        }
        assert!(p.descriptors.len() >= 10, "{class} descriptors");
    }
}

#[test]
fn readable_names_follow_the_datasets() {
    let store = PromptStore { recipes: None };
    let name = |c: &str| store.resolve(c).unwrap().set.class.name;
    assert_eq!(name("metal_nut"), "metal nut");
    assert_eq!(name("pcb1"), "printed circuit board");
    assert_eq!(name("chewinggum"), "chewing gum");
}

#[test]
fn every_file_in_prompts_is_compiled_in() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let shipped: Vec<&str> = PromptStore::shipped().map(|(id, _)| id).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        assert!(shipped.contains(&stem.as_str()), "{stem}.toml is not in SHIPPED");
        PromptSet::from_file(&path).unwrap();
    }
}

#[test]
fn unknown_class_gets_the_generic_set_under_its_name() {
    let r = PromptStore { recipes: None }.resolve("gear_wheel").unwrap();
    assert!(r.generic_fallback);
    let p = r.set.expand();
    assert!(p.abnormal.iter().any(|p| p.text.contains("gear wheel")));
    assert!(p.normal.len() >= 70 && p.abnormal.len() >= 70);
}

#[test]
fn a_recipes_prompt_set_overrides_the_shipped_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, shipped) = PromptStore::shipped().find(|(id, _)| *id == "bottle").unwrap();
    let edited = shipped.replacen("\n    \"A normal image of {c}", "\n    \"A normal image of {c} edited by hand", 1);
    assert_ne!(edited, shipped);
    let recipes = alfa::recipe::Recipes::new(tmp.path());
    std::fs::create_dir_all(tmp.path().join("bottle")).unwrap();
    std::fs::write(tmp.path().join("bottle/prompts.toml"), edited).unwrap();
    let r = PromptStore::in_recipes(&recipes).resolve("bottle").unwrap();
    assert_eq!(r.path.as_deref(), Some(tmp.path().join("bottle/prompts.toml").as_path()));
    assert!(r.set.expand().normal.iter().any(|p| p.text.contains("edited by hand")));
    assert!(PromptStore::in_recipes(&recipes).classes().contains(&"bottle".to_owned()));
    // A legacy file beside the recipes (`<dir>/bottle.toml`) is not read.
    std::fs::write(tmp.path().join("screw.toml"), shipped).unwrap();
    assert!(PromptStore::in_recipes(&recipes).resolve("screw").unwrap().path.is_none());
}

#[test]
fn a_malformed_file_names_file_line_and_problem() {
    let (_, shipped) = PromptStore::shipped().find(|(id, _)| *id == "bottle").unwrap();
    // Break the line holding the first LLM prompt (drop its opening quote).
    let broken = shipped.replacen("\n    \"A normal image of", "\n    A normal image of", 1);
    assert_ne!(broken, shipped);
    let line = broken.lines().position(|l| l.trim_start().starts_with("A normal image of")).unwrap() + 1;
    let err = PromptSet::from_toml(&broken, Path::new("prompts/bottle.toml")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PromptError::Parse { line: Some(l), .. } if l == line), "{msg} (expected line {line})");
    assert!(msg.contains("prompts/bottle.toml"), "{msg}");
}

#[test]
fn an_empty_label_is_an_error() {
    let text = r#"
[class]
id = "x"
name = "x"
kind = "object"
[templates]
bases = ["a {domain} of a {state}."]
domains = ["photo"]
normal_states = ["{c}"]
abnormal_states = []
[llm]
normal = ["A normal image of {c} is fine."]
abnormal = []
[descriptors]
abnormal = ["a crack"]
"#;
    let err = PromptSet::from_toml(text, Path::new("x.toml")).unwrap_err().to_string();
    assert!(err.contains("abnormal label has no prompts"), "{err}");
    let with_blank = text.replace("abnormal = []\n[descriptors]", "abnormal = [\"  \"]\n[descriptors]");
    let err = PromptSet::from_toml(&with_blank, Path::new("x.toml")).unwrap_err().to_string();
    assert!(err.contains("llm.abnormal") && err.contains("empty"), "{err}");
}

/// CLIP reads 77 tokens: no shipped prompt may be cut off.
#[test]
fn shipped_prompts_fit_the_context() {
    let tokenizer_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/clip/tokenizer.json");
    let tokenizer = alfa::clip::ClipTokenizer::from_file(&tokenizer_path, 77).unwrap();
    for (id, text) in PromptStore::shipped() {
        let p = PromptSet::from_toml(text, Path::new(id)).unwrap().expand();
        for prompt in p.normal.iter().chain(&p.abnormal) {
            let n = tokenizer.encode(&prompt.text).unwrap().len();
            assert!(n < 77, "{id}: {n} tokens: {:?}", prompt.text);
        }
    }
}

/// The template parts are written apart (`a {domain}` with `industrial photo`, `of a
/// {state}` with `abnormal {c}`): the expanded prompts must read "an" before a vowel.
#[test]
fn expanded_prompts_use_an_before_a_vowel_sound() {
    let store = PromptStore { recipes: None };
    let bottle = store.resolve("bottle").unwrap().set.expand();
    let texts: Vec<&str> = bottle.normal.iter().chain(&bottle.abnormal).map(|p| p.text.as_str()).collect();
    assert!(texts.contains(&"an industrial photo of the bottle for visual inspection."), "{texts:#?}");
    assert!(texts.contains(&"a close-up photo of an abnormal bottle."), "{texts:#?}");
    assert!(texts.contains(&"a close-up industrial photo of an unblemished bottle."), "{texts:#?}");
    let generic = store.resolve("object").unwrap().set.expand();
    for (id, text) in PromptStore::shipped() {
        let p = PromptSet::from_toml(text, Path::new(id)).unwrap().expand();
        for prompt in p.normal.iter().chain(&p.abnormal).chain(&generic.normal) {
            let lower = prompt.text.to_lowercase();
            for wrong in ["a industrial", "a abnormal", "a imperfect", "a unblemished", "a object"] {
                assert!(!lower.starts_with(wrong) && !lower.contains(&format!(" {wrong}")), "{id}: {:?}", prompt.text);
            }
        }
        assert_eq!(p.normal.iter().filter(|p| p.source == PromptSource::Template).count(), 72, "{id}");
    }
}

/// Found by `cargo fuzz run prompt_file` (fuzz/): `llm.source` and `descriptors.query` are
/// optional, but merging generated prompts into (or the app's rewrite of) a file without
/// them panicked ("index not found" in toml_edit) instead of adding them.
#[test]
fn a_file_without_the_optional_keys_takes_merged_prompts() {
    use alfa::prompts::generate::Generated;
    use alfa::prompts::merge::PromptFile;

    let dir = tempfile::tempdir().unwrap();
    let text = "[class]\nid = \"x\"\nname = \"x\"\nkind = \"texture\"\n[templates]\nbases = []\ndomains = []\n\
                normal_states = []\nabnormal_states = []\n[llm]\nnormal = [\"n\"]\nabnormal = [\"a\"] # mine\n\
                [descriptors]\nabnormal = []\n";
    std::fs::write(dir.path().join("x.toml"), text).unwrap();
    let file = PromptFile::load(dir.path(), "x").unwrap();
    assert_eq!((file.set.llm.source.as_str(), file.set.descriptors.query.as_str()), ("", ""));

    let generated = Generated {
        normal: vec!["A normal image of {c} is even.".into()],
        descriptor_query: "Q: descriptors?".into(),
        ..Generated::default()
    };
    let update = file.merge(&generated, "the test").unwrap();
    let merged = PromptSet::from_toml(&update.text, &update.path).unwrap();
    assert_eq!(merged.llm.source, "the test");
    assert_eq!(merged.descriptors.query, "Q: descriptors?");
    assert_eq!(merged.llm.normal, ["n", "A normal image of {c} is even."]);
    assert!(update.text.contains("# mine"), "{}", update.text);

    // The prompt editor's save of an edited set goes through the same code.
    let mut edited = file.set.clone();
    edited.llm.abnormal.push("b".into());
    let update = file.rewrite(&edited).unwrap();
    assert_eq!(PromptSet::from_toml(&update.text, &update.path).unwrap(), edited);
    assert!(!update.text.contains("source"), "an empty optional key stays absent: {}", update.text);
}
