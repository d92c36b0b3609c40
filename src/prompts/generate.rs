//! Asking an LLM for a class's prompts and descriptors (ALFA's queries, METHOD section 1)
//! and turning the answers into prompt strings.
//!
//! The LLM's text is data only: it is split into list items, cleaned, and each item can
//! only ever become one prompt string. Rules, in order:
//!
//! - **Items.** Lines that start with a bullet (`-`, `*`, `•`, `–`, `+`) or a number (`1.`,
//!   `1)`) are the items. An answer without any such line is read line by line, but only
//!   when it has at least two lines: one sentence is an answer, not a list.
//! - **Clean-up.** Control characters, markdown emphasis (`**`, `__`, backticks) and
//!   surrounding quotes go; whitespace is collapsed. Introductions and sign-offs ("Sure,
//!   here are...", lines ending in `:`, "I hope this helps") are dropped.
//! - **Class name.** The class's readable name (whole words, any case) becomes `{c}`, as in
//!   the shipped sets; braces the LLM wrote are removed, so no other placeholder can appear.
//! - **Required beginning.** A normal prompt must start "A normal image of {c}", an abnormal
//!   one "An abnormal image of {c}" (the paper's syntactic consistency). An item is kept,
//!   with that exact beginning, when the words before its first `{c}`, ignoring articles
//!   (a, an, the), are the label's word ("normal"; "abnormal" or "anomalous") plus only
//!   "image", "photo", "picture" or "of": "A normal image of the {c} shows..." and "An
//!   anomalous {c} has..." are rewritten, "A normal image of {c}" under the abnormal query
//!   or "Look for cracks on the {c}" are dropped. Descriptors have no required beginning.
//! - **Length.** A prompt (with `{c}` filled in) longer than CLIP's 77-token context,
//!   counted with the real tokenizer, is dropped: CLIP would cut its end silently.
//! - **Duplicates** (case- and whitespace-insensitive) are dropped.

use std::collections::HashSet;

use std::path::Path;

use super::PromptError;
use super::llm::{LlmApi, LlmClient, LlmError, RetryNotice};
pub use super::merge::{Dropped, Generated};
use super::merge::{PromptFile, PromptFileUpdate};
use super::set::normalize;
use crate::clip::{ClipError, ClipTokenizer};

/// CLIP's text context, start and end markers included.
pub const CLIP_CONTEXT: usize = 77;

/// The normal-prompt query (ALFA's question with its syntactic-consistency instruction).
pub const NORMAL_QUERY: &str = "How to identify a normal {c} in an image? Give a list of many different answers, \
     one per line, and start each answer with \"A normal image of {c}\".";
pub const ABNORMAL_QUERY: &str = "How to identify an abnormal {c} in an image? Give a list of many different answers, \
     one per line, and start each answer with \"An abnormal image of {c}\".";
/// The paper's descriptor query, verbatim: its answer continues the bullet it opens.
pub const DESCRIPTOR_QUERY: &str = "Q: What are useful descriptions for distinguishing an anomaly {c} in a photo? \
     A: There are several key descriptions to tell there is an anomaly {c} in a photo:\n-";

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Normal,
    Abnormal,
    Descriptors,
}

impl QueryKind {
    pub const ALL: [QueryKind; 3] = [QueryKind::Normal, QueryKind::Abnormal, QueryKind::Descriptors];

    pub fn label(self) -> &'static str {
        match self {
            QueryKind::Normal => "normal",
            QueryKind::Abnormal => "abnormal",
            QueryKind::Descriptors => "descriptor",
        }
    }

    /// The query with `{c}` unfilled, as sent through `api` and recorded in the file.
    /// A completion model continues text, so the prompt queries open a bullet for it.
    pub fn query(self, api: LlmApi) -> String {
        match (self, api) {
            (QueryKind::Normal, LlmApi::Chat) => NORMAL_QUERY.to_owned(),
            (QueryKind::Abnormal, LlmApi::Chat) => ABNORMAL_QUERY.to_owned(),
            (QueryKind::Normal, LlmApi::Completions) => format!("{NORMAL_QUERY}\n-"),
            (QueryKind::Abnormal, LlmApi::Completions) => format!("{ABNORMAL_QUERY}\n-"),
            (QueryKind::Descriptors, _) => DESCRIPTOR_QUERY.to_owned(),
        }
    }

    /// The beginning every prompt of this label has, and the words that may stand before
    /// `{c}` in an item that is rewritten to it.
    fn required_beginning(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            QueryKind::Normal => Some(("A normal image of {c}", &["normal"])),
            QueryKind::Abnormal => Some(("An abnormal image of {c}", &["abnormal", "anomalous"])),
            QueryKind::Descriptors => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("{url}: no list items found in the answer to the {kind} query: {excerpt:?}")]
    NoListItems {
        url: String,
        kind: &'static str,
        excerpt: String,
    },
    #[error(transparent)]
    PromptFile(#[from] PromptError),
    #[error("cannot count a prompt's tokens: {0}")]
    Tokenizer(#[from] ClipError),
    #[error("--samples must be at least 1")]
    NoSamples,
}

/// Progress of a generation, for a progress bar or a GUI status line.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerateEvent {
    /// One answer arrived and was parsed; `done` of `total` requests are finished.
    Answered {
        kind: QueryKind,
        done: usize,
        total: usize,
        kept: usize,
    },
    /// The server asked to slow down or failed; the request is repeated after a wait.
    Retrying(RetryNotice),
}

/// What generating for one class gives: the prompts, and the prompt file with them merged
/// in (not written yet: `update.write()`, or nothing for a dry run).
#[derive(Debug, Clone)]
pub struct ClassPlan {
    pub generated: Generated,
    pub update: PromptFileUpdate,
}

/// Reads the prompt file `file` of `class` (or the set it will start from), asks the LLM
/// about the class, and merges the answers into the file's text. Fails before any
/// request when the existing file is invalid.
pub fn plan_class(
    client: &LlmClient,
    tokenizer: &ClipTokenizer,
    file: &Path,
    class: &str,
    samples: usize,
    on_event: &mut dyn FnMut(GenerateEvent),
) -> Result<ClassPlan, GenerateError> {
    let file = PromptFile::load_file(file, class)?;
    let generated = generate(client, tokenizer, &file.set.class.name, samples, on_event)?;
    let source = provenance(client, samples, std::time::SystemTime::now());
    let update = file.merge(&generated, &source)?;
    Ok(ClassPlan { generated, update })
}

/// Asks every query `samples` times for the class named `class_name` (the readable name).
pub fn generate(
    client: &LlmClient,
    tokenizer: &ClipTokenizer,
    class_name: &str,
    samples: usize,
    on_event: &mut dyn FnMut(GenerateEvent),
) -> Result<Generated, GenerateError> {
    if samples == 0 {
        return Err(GenerateError::NoSamples);
    }
    let api = client.config().api;
    let total = QueryKind::ALL.len() * samples;
    let mut done = 0;
    let mut generated = Generated {
        queries: vec![QueryKind::Normal.query(api), QueryKind::Abnormal.query(api)],
        descriptor_query: QueryKind::Descriptors.query(api),
        ..Generated::default()
    };
    for kind in QueryKind::ALL {
        let query = kind.query(api);
        let mut seen = HashSet::new();
        let mut kept = Vec::new();
        for _ in 0..samples {
            let mut answer = client.complete(&query.replace("{c}", class_name), &mut |notice| {
                on_event(GenerateEvent::Retrying(notice.clone()))
            })?;
            // The query opened the first bullet; the answer continues it.
            if query.ends_with("\n-") && api == LlmApi::Completions {
                answer.insert(0, '-');
            }
            let items = list_items(&answer);
            if items.is_empty() {
                return Err(GenerateError::NoListItems {
                    url: client.endpoint().to_owned(),
                    kind: kind.label(),
                    excerpt: answer.chars().take(200).collect(),
                });
            }
            let before = kept.len();
            for item in items {
                let Some(prompt) = prompt_from_item(&item, kind, class_name) else {
                    generated.dropped.wrong_beginning += 1;
                    continue;
                };
                if tokenizer.token_count(&prompt.replace("{c}", class_name))? > CLIP_CONTEXT {
                    generated.dropped.too_long += 1;
                } else if !seen.insert(normalize(&prompt)) {
                    generated.dropped.duplicates += 1;
                } else {
                    kept.push(prompt);
                }
            }
            done += 1;
            on_event(GenerateEvent::Answered {
                kind,
                done,
                total,
                kept: kept.len() - before,
            });
        }
        match kind {
            QueryKind::Normal => generated.normal = kept,
            QueryKind::Abnormal => generated.abnormal = kept,
            QueryKind::Descriptors => generated.descriptors = kept,
        }
    }
    Ok(generated)
}

/// The `[llm] source` line of a generation: model, endpoint, date and samples.
pub fn provenance(client: &LlmClient, samples: usize, now: std::time::SystemTime) -> String {
    format!(
        "`alfa prompts generate`: {} at {} on {} (UTC), {samples} samples per query",
        client.config().model,
        client.endpoint(),
        crate::time::utc_date(now)
    )
}

/// The items of a list in an LLM's answer, cleaned and without duplicates.
pub fn list_items(answer: &str) -> Vec<String> {
    let lines: Vec<String> = answer.lines().map(without_controls).collect();
    let marked: Vec<&str> = lines.iter().filter_map(|l| strip_list_marker(l)).collect();
    let candidates: Vec<&str> = if marked.is_empty() {
        let plain: Vec<&str> = lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
        if plain.iter().filter(|l| !is_boilerplate(&clean_item(l))).count() < 2 {
            return Vec::new();
        }
        plain
    } else {
        marked
    };
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .map(clean_item)
        .filter(|item| !is_boilerplate(item))
        .filter(|item| seen.insert(normalize(item)))
        .collect()
}

/// Tabs and other control characters become spaces (a line has no newlines left).
fn without_controls(line: &str) -> String {
    line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The text after a bullet or a number, or `None` for a line that is no list item.
fn strip_list_marker(line: &str) -> Option<&str> {
    let line = line.trim_start();
    if let Some(rest) = line.strip_prefix('•') {
        return Some(rest);
    }
    for bullet in ['-', '*', '–', '+'] {
        if let Some(rest) = line.strip_prefix(bullet)
            && rest.starts_with(char::is_whitespace)
        {
            return Some(rest);
        }
    }
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if (1..=3).contains(&digits) {
        let rest = &line[digits..];
        let rest = rest.strip_prefix('.').or_else(|| rest.strip_prefix(')'))?;
        if rest.is_empty() || rest.starts_with(char::is_whitespace) {
            return Some(rest);
        }
    }
    None
}

const QUOTES: &[char] = &['"', '\'', '“', '”', '‘', '’', '«', '»', '`'];

/// Without markdown emphasis, surrounding quotes and extra whitespace.
fn clean_item(item: &str) -> String {
    let text = item.replace("**", "").replace("__", "").replace('`', "");
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    loop {
        let trimmed = text.trim_matches(|c: char| c == '*' || c == '_' || c.is_whitespace());
        // A pair of quotes around the whole item, perhaps with the period outside.
        let body = trimmed.strip_suffix('.').filter(|t| t.ends_with(QUOTES)).unwrap_or(trimmed);
        let unquoted = body
            .strip_prefix(QUOTES)
            .and_then(|t| t.strip_suffix(QUOTES))
            .unwrap_or(trimmed);
        if unquoted.len() == text.len() {
            return text;
        }
        text = unquoted.trim().to_owned();
    }
}

/// Introductions, headings and sign-offs around the list.
fn is_boilerplate(item: &str) -> bool {
    const OPENINGS: [&str; 14] = [
        "sure", "certainly", "of course", "absolutely", "here are", "here is", "here's", "i hope", "hope this",
        "let me know", "note:", "okay", "ok,", "#",
    ];
    let lower = item.to_lowercase();
    item.is_empty()
        || !item.chars().any(char::is_alphanumeric)
        || item.ends_with(':')
        || OPENINGS.iter().any(|o| lower.starts_with(o))
}

/// The prompt an item becomes for `kind`, with `{c}` for the class, or `None` when the
/// item does not have (and cannot be given) the required beginning.
pub fn prompt_from_item(item: &str, kind: QueryKind, class_name: &str) -> Option<String> {
    let text = with_placeholder(item, class_name);
    let Some((beginning, label_words)) = kind.required_beginning() else {
        return Some(text);
    };
    let at = text.find("{c}")?;
    let mut has_label = false;
    for word in text[..at]
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
    {
        match word.as_str() {
            "a" | "an" | "the" | "image" | "photo" | "picture" | "of" => {}
            w if label_words.contains(&w) => has_label = true,
            _ => return None,
        }
    }
    let rest = &text[at + "{c}".len()..];
    (has_label && rest.chars().any(char::is_alphanumeric)).then(|| format!("{beginning}{rest}"))
}

/// The item with the class name (whole words, any case) as `{c}`; the LLM's own braces go.
fn with_placeholder(item: &str, class_name: &str) -> String {
    let text: String = item.replace("{c}", class_name).chars().filter(|c| !matches!(c, '{' | '}')).collect();
    let name = class_name.trim();
    if name.is_empty() {
        return text;
    }
    let is_word_char = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let candidate = text.get(i..i + name.len());
        let matches = candidate.is_some_and(|c| c.eq_ignore_ascii_case(name))
            && !is_word_char(text[..i].chars().next_back())
            && !is_word_char(text[i + name.len()..].chars().next());
        if matches {
            out.push_str("{c}");
            i += name.len();
        } else {
            let c = text[i..].chars().next().expect("i is a char boundary below len");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bullets_numbers_and_plain_lines() {
        let answer = "Sure, here are some ways:\n\n- first item\n* second item\n• third item\n1. fourth item\n2) fifth item\n  - nested item\nThanks!";
        assert_eq!(
            list_items(answer),
            ["first item", "second item", "third item", "fourth item", "fifth item", "nested item"]
        );
        assert_eq!(list_items("one line\nanother line\n"), ["one line", "another line"]);
        assert!(list_items("I'm sorry, I cannot help with that.").is_empty());
        assert!(list_items("Here are the answers:\n\n").is_empty());
        // A negative number or a hyphenated word is not a bullet.
        assert!(strip_list_marker("-5 degrees").is_none());
        assert_eq!(strip_list_marker("25. item"), Some(" item"));
        assert!(strip_list_marker("2025. was a year").is_none());
        assert!(strip_list_marker("12345. too many digits").is_none());
    }

    #[test]
    fn boilerplate_markdown_and_quotes_are_removed() {
        let answer = "Certainly! Here is a list:\n**Normal features:**\n1. **A normal image of bottle** shows a \"round\" rim.\n2. \"A normal image of bottle has no cracks.\"\n3. `A normal image of bottle` is clean.\n4. “A normal image of bottle is brown”.\nI hope this helps!";
        assert_eq!(
            list_items(answer),
            [
                "A normal image of bottle shows a \"round\" rim.",
                "A normal image of bottle has no cracks.",
                "A normal image of bottle is clean.",
                "A normal image of bottle is brown",
            ]
        );
    }

    #[test]
    fn control_characters_and_duplicates() {
        let answer = "- a\u{7}b\tc\u{1b}[31m\n- A  B C [31m\n-  a b   c  [31M\n- x\u{0}y";
        // The escape's letters stay as text: only the control characters go.
        assert_eq!(list_items(answer), ["a b c [31m", "x y"]);
        assert_eq!(list_items("- Same thing\n- same   THING\n- other"), ["Same thing", "other"]);
    }

    #[test]
    fn the_required_beginning_is_kept_or_rewritten() {
        let normal = |s| prompt_from_item(s, QueryKind::Normal, "metal nut");
        let abnormal = |s| prompt_from_item(s, QueryKind::Abnormal, "metal nut");
        assert_eq!(
            normal("a NORMAL image of Metal Nut shows the metal nut's thread.").as_deref(),
            Some("A normal image of {c} shows the {c}'s thread.")
        );
        assert_eq!(
            normal("A normal image of a metal nut is flat.").as_deref(),
            Some("A normal image of {c} is flat.")
        );
        assert_eq!(normal("A normal metal nut is flat.").as_deref(), Some("A normal image of {c} is flat."));
        assert_eq!(
            abnormal("An anomalous metal nut has a dent.").as_deref(),
            Some("An abnormal image of {c} has a dent.")
        );
        assert_eq!(normal("An abnormal image of metal nut has a dent."), None);
        assert_eq!(abnormal("A normal image of metal nut is flat."), None);
        assert_eq!(abnormal("Look for cracks on the metal nut."), None);
        assert_eq!(abnormal("Cracks are visible."), None);
        assert_eq!(abnormal("An abnormal image of metal nut."), None);
        // Whole words only: the class `pill` is not in `pillow`.
        assert_eq!(
            prompt_from_item("A normal image of {c} has no pillow marks.", QueryKind::Normal, "pill").as_deref(),
            Some("A normal image of {c} has no pillow marks.")
        );
        // Stray placeholders cannot survive.
        assert_eq!(
            prompt_from_item("a {state} crack on {the} metal nut", QueryKind::Descriptors, "metal nut").as_deref(),
            Some("a state crack on the {c}")
        );
    }
}
