//! An LLM's answer -> `list_items` -> `prompt_from_item` for each query kind, as
//! `alfa prompts generate` does, then the prompts merged into the shipped `bottle`
//! prompt file, which must stay valid. The tokenizer's length check is left out (CLIP's
//! tokenizer.json is not in the repository); its precondition (no blank prompt) is checked.
//!
//! Input: UTF-8; the first line is the class name, the rest the answer.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use alfa::prompts::generate::{Generated, QueryKind, list_items, prompt_from_item};
use alfa::prompts::merge::PromptFile;
use alfa::prompts::set::normalize;
use alfa::prompts::PromptSet;
use libfuzzer_sys::fuzz_target;

fn shipped() -> &'static PromptFile {
    static FILE: OnceLock<PromptFile> = OnceLock::new();
    FILE.get_or_init(|| {
        let empty = tempfile::tempdir().expect("a temporary folder");
        PromptFile::load(empty.path(), "bottle").expect("the shipped bottle set")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (class_name, answer) = input.split_once('\n').unwrap_or(("bottle", input));
    let mut generated = Generated::default();
    for kind in QueryKind::ALL {
        // A completion model continues the descriptor query's opened bullet.
        for answer in [answer.to_owned(), format!("-{answer}")] {
            let mut seen = HashSet::new();
            for item in list_items(&answer) {
                assert!(!item.trim().is_empty(), "empty item from {answer:?}");
                assert!(!item.contains(char::is_control), "control character in item {item:?}");
                let Some(prompt) = prompt_from_item(&item, kind, class_name) else {
                    continue;
                };
                assert!(
                    !prompt.replace("{c}", "").contains(['{', '}']),
                    "a placeholder other than {{c}} in {prompt:?}"
                );
                // The tokenizer's length check refuses blank text (`ClipError::EmptyText`),
                // which would end the whole generation.
                let filled = prompt.replace("{c}", class_name);
                assert!(filled.chars().any(char::is_alphanumeric), "prompt without words: {prompt:?} for {class_name:?}");
                match kind {
                    QueryKind::Normal => assert!(prompt.starts_with("A normal image of {c}"), "{prompt:?}"),
                    QueryKind::Abnormal => assert!(prompt.starts_with("An abnormal image of {c}"), "{prompt:?}"),
                    QueryKind::Descriptors => {}
                }
                if seen.insert(normalize(&prompt)) {
                    match kind {
                        QueryKind::Normal => generated.normal.push(prompt),
                        QueryKind::Abnormal => generated.abnormal.push(prompt),
                        QueryKind::Descriptors => generated.descriptors.push(prompt),
                    }
                }
            }
        }
    }
    let file = shipped();
    let update = file
        .merge(&generated, "fuzz")
        .unwrap_or_else(|e| panic!("merging generated prompts failed: {e}"));
    PromptSet::from_toml(&update.text, &update.path)
        .unwrap_or_else(|e| panic!("the merged file does not parse: {e}"));
});
