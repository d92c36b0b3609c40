//! A prompt file and a list of new prompts -> `PromptFile::load` (parse + checks) ->
//! `PromptFile::merge` (LLM prompts appended, comments kept) -> the merged text parsed
//! again, and merging the same prompts once more adds nothing. Also `rewrite` with
//! reordered and shortened lists (the app's prompt editor).
//!
//! Input: UTF-8; the prompt file is the text before the first NUL, after it one line
//! each: the source, the descriptor query, then prompts dealt in turn to normal,
//! abnormal, descriptors and queries.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use alfa::prompts::generate::Generated;
use alfa::prompts::merge::{PromptFile, with_generated};
use alfa::prompts::PromptSet;
use libfuzzer_sys::fuzz_target;

const CLASS: &str = "fuzzed";

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder")).path()
}

fn load(text: &str) -> Option<PromptFile> {
    let path = dir().join(format!("{CLASS}.toml"));
    std::fs::write(&path, text).expect("writes the prompt file");
    PromptFile::load(dir(), CLASS).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (file_text, extra) = input.split_once('\0').unwrap_or((input, ""));
    let Some(file) = load(file_text) else {
        return;
    };
    let mut lines = extra.split('\n');
    // `provenance()` never gives an empty source.
    let source = match lines.next().map(str::trim) {
        Some(line) if !line.is_empty() => line.to_owned(),
        _ => "`alfa prompts generate`: fuzz".to_owned(),
    };
    let mut generated = Generated {
        descriptor_query: lines.next().unwrap_or_default().to_owned(),
        ..Generated::default()
    };
    // The generator never yields a blank prompt (it needs a letter or digit).
    for (i, line) in lines.filter(|l| l.chars().any(char::is_alphanumeric)).enumerate() {
        let list = match i % 4 {
            0 => &mut generated.normal,
            1 => &mut generated.abnormal,
            2 => &mut generated.descriptors,
            _ => &mut generated.queries,
        };
        list.push(line.to_owned());
    }

    let expected = with_generated(&file.set, &generated, &source);
    let update = file
        .merge(&generated, &source)
        .unwrap_or_else(|e| panic!("merging into a valid file failed: {e}"));
    let reparsed = PromptSet::from_toml(&update.text, &update.path)
        .unwrap_or_else(|e| panic!("the merged file does not parse: {e}\n{}", update.text));
    assert_eq!(reparsed, expected, "the merged file holds other prompts");

    // Merging the same answer again adds no prompt. (The source does grow: a file whose
    // source was `A` gets `A; then S` and then `A; then S; then S`.)
    let merged = load(&update.text).expect("the merged file loads");
    let again = merged.merge(&generated, &source).expect("a second merge");
    assert_eq!(again.added_count(), 0, "a second merge added prompts");
    let mut again = PromptSet::from_toml(&again.text, &again.path).expect("the second merge parses");
    assert!(again.llm.source.starts_with(&expected.llm.source));
    again.llm.source = expected.llm.source.clone();
    assert_eq!(again, expected, "a second merge changed the prompts");

    // The editor's rewrite: lists reordered and shortened keep the file valid.
    let mut edited = file.set.clone();
    edited.llm.normal.reverse();
    edited.templates.domains.reverse();
    edited.descriptors.abnormal.pop();
    edited.llm.queries.retain(|q| q.len() % 2 == 0);
    let rewritten = file
        .rewrite(&edited)
        .unwrap_or_else(|e| panic!("rewriting a valid edit failed: {e}"));
    assert_eq!(PromptSet::from_toml(&rewritten.text, &rewritten.path).ok(), Some(edited));
});
