//! Adding generated prompts to a class's prompt file without losing anything a user wrote.
//!
//! The file is edited as a TOML document (`toml_edit`), not re-serialised, so comments,
//! order and formatting survive. Every existing prompt stays; new prompts that are not
//! already there (case- and whitespace-insensitively) are appended. The file is written
//! atomically: a temporary file in the same folder, then a rename.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Value};

use super::generate::Generated;
use super::set::{PromptSet, file_for, normalize};
use super::store::{GENERIC, PromptStore};
use super::PromptError;

/// A class's prompt file as it is now, or the set it will start from.
#[derive(Debug, Clone)]
pub struct PromptFile {
    pub path: PathBuf,
    /// `false`: the file does not exist yet and starts from the shipped (or generic) set.
    pub exists: bool,
    pub set: PromptSet,
    text: String,
}

/// The new content of a prompt file and what it adds.
#[derive(Debug, Clone)]
pub struct PromptFileUpdate {
    pub path: PathBuf,
    pub creates: bool,
    pub added_normal: Vec<String>,
    pub added_abnormal: Vec<String>,
    pub added_descriptors: Vec<String>,
    pub text: String,
}

impl PromptFile {
    /// `dir/<class>.toml`, or the shipped set of `class` (the generic one renamed to it).
    pub fn load(dir: &Path, class: &str) -> Result<Self, PromptError> {
        let path = file_for(dir, class);
        if class.is_empty() || class.starts_with('.') || class.contains(['/', '\\', ':']) {
            return Err(PromptError::Invalid {
                path,
                reason: format!("{class:?} is not a usable class name for a file"),
            });
        }
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|source| PromptError::Io {
                path: path.clone(),
                source,
            })?;
            let set = PromptSet::from_toml(&text, &path)?;
            return Ok(Self { path, exists: true, set, text });
        }
        let resolved = PromptStore { dir: None }.resolve(class)?;
        let shipped_id = if resolved.generic_fallback { GENERIC } else { class };
        let (_, shipped) = PromptStore::shipped()
            .find(|(id, _)| *id == shipped_id)
            .expect("resolve found this set among the shipped ones");
        let mut doc = parse(shipped, &path)?;
        doc["class"]["id"] = toml_edit::value(&resolved.set.class.id);
        doc["class"]["name"] = toml_edit::value(&resolved.set.class.name);
        let text = doc
            .to_string()
            .replacen(&format!("prompt set for {shipped_id}."), &format!("prompt set for {class}."), 1);
        Ok(Self {
            path,
            exists: false,
            set: resolved.set,
            text,
        })
    }

    /// The file with the new prompts of `generated` appended and `source` recorded.
    pub fn merge(&self, generated: &Generated, source: &str) -> Result<PromptFileUpdate, PromptError> {
        let name = &self.set.class.name;
        let new_only = |existing: &[String], new: &[String]| {
            let mut seen: std::collections::HashSet<String> =
                existing.iter().map(|p| normalize(&p.replace("{c}", name))).collect();
            new.iter()
                .filter(|p| seen.insert(normalize(&p.replace("{c}", name))))
                .cloned()
                .collect::<Vec<_>>()
        };
        let added_normal = new_only(&self.set.llm.normal, &generated.normal);
        let added_abnormal = new_only(&self.set.llm.abnormal, &generated.abnormal);
        let added_descriptors = new_only(&self.set.descriptors.abnormal, &generated.descriptors);

        let mut doc = parse(&self.text, &self.path)?;
        append(&mut doc["llm"]["normal"], &added_normal);
        append(&mut doc["llm"]["abnormal"], &added_abnormal);
        append(&mut doc["descriptors"]["abnormal"], &added_descriptors);
        let queries = new_only(&self.set.llm.queries, &generated.queries);
        append(&mut doc["llm"]["queries"], &queries);
        let previous = self.set.llm.source.trim();
        doc["llm"]["source"] = toml_edit::value(if previous.is_empty() || previous == source {
            source.to_owned()
        } else {
            format!("{previous}; then {source}")
        });
        doc["descriptors"]["query"] = toml_edit::value(&generated.descriptor_query);
        let text = doc.to_string();

        // The edit must read back as the old set plus the additions, nothing else.
        let merged = PromptSet::from_toml(&text, &self.path)?;
        let mut expected = self.set.clone();
        expected.llm.normal.extend(added_normal.iter().cloned());
        expected.llm.abnormal.extend(added_abnormal.iter().cloned());
        expected.descriptors.abnormal.extend(added_descriptors.iter().cloned());
        if (&merged.llm.normal, &merged.llm.abnormal, &merged.descriptors.abnormal, &merged.class)
            != (&expected.llm.normal, &expected.llm.abnormal, &expected.descriptors.abnormal, &expected.class)
        {
            return Err(PromptError::Invalid {
                path: self.path.clone(),
                reason: "the merged file does not read back as the old prompts plus the new ones; nothing written"
                    .into(),
            });
        }
        Ok(PromptFileUpdate {
            path: self.path.clone(),
            creates: !self.exists,
            added_normal,
            added_abnormal,
            added_descriptors,
            text,
        })
    }
}

impl PromptFileUpdate {
    pub fn added_count(&self) -> usize {
        self.added_normal.len() + self.added_abnormal.len() + self.added_descriptors.len()
    }

    /// Writes the file atomically (a reader sees the old file or the new one, never half).
    pub fn write(&self) -> Result<(), PromptError> {
        let error = |source| PromptError::Write {
            path: self.path.clone(),
            source,
        };
        crate::files::write_atomic(&self.path, self.text.as_bytes()).map_err(error)
    }
}

fn parse(text: &str, path: &Path) -> Result<DocumentMut, PromptError> {
    text.parse::<DocumentMut>().map_err(|e| PromptError::Parse {
        path: path.to_owned(),
        line: None,
        reason: e.to_string(),
    })
}

/// Appends `items` to an array of strings, one per line as in the shipped files.
fn append(item: &mut Item, items: &[String]) {
    if items.is_empty() {
        return;
    }
    if item.as_array().is_none() {
        *item = Item::Value(Value::Array(Array::new()));
    }
    let array = item.as_array_mut().expect("made an array just above");
    for text in items {
        array.push_formatted(Value::from(text.as_str()).decorated("\n    ", ""));
    }
    array.set_trailing_comma(true);
    // Keep what stands after the last item (a user's comment); close a one-line array.
    if !array.trailing().as_str().is_some_and(|t| t.contains('\n')) {
        array.set_trailing("\n");
    }
}
