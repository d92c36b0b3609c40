//! Adding generated prompts to a class's prompt file without losing anything a user wrote.
//!
//! The file is edited as a TOML document (`toml_edit`), not re-serialised, so comments,
//! order and formatting survive. Every existing prompt stays; new prompts that are not
//! already there (case- and whitespace-insensitively) are appended. The file is written
//! atomically: a temporary file in the same folder, then a rename.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Value};

use super::set::{ClassKind, PromptSet, file_for, normalize};
use super::store::{GENERIC, PromptStore};
use super::PromptError;

/// Items that did not become prompts, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub wrong_beginning: usize,
    pub too_long: usize,
    pub duplicates: usize,
}

/// A class's generated prompts, with `{c}` for the class name: what `generate` returns
/// and merging takes (defined here, and re-exported by `generate`, so that `generate`,
/// which merges its answers into the file, is the only one of the two to import the other).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    pub normal: Vec<String>,
    pub abnormal: Vec<String>,
    pub descriptors: Vec<String>,
    /// The normal and abnormal queries, `{c}` unfilled.
    pub queries: Vec<String>,
    pub descriptor_query: String,
    pub dropped: Dropped,
}

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
        Self::load_file(&file_for(dir, class), class)
    }

    /// The prompt file `path` of `class` (a recipe's prompts.toml), or the shipped set
    /// of `class` (the generic one renamed to it) when there is no such file.
    pub fn load_file(path: &Path, class: &str) -> Result<Self, PromptError> {
        let path = path.to_owned();
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
        let resolved = PromptStore { recipes: None }.resolve(class)?;
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
        let merged = with_generated(&self.set, generated, source);
        let added = |old: &[String], new: &[String]| new[old.len()..].to_vec();
        let mut update = self.rewrite(&merged)?;
        update.added_normal = added(&self.set.llm.normal, &merged.llm.normal);
        update.added_abnormal = added(&self.set.llm.abnormal, &merged.llm.abnormal);
        update.added_descriptors = added(&self.set.descriptors.abnormal, &merged.descriptors.abnormal);
        Ok(update)
    }

    /// The file changed to hold `set`, keeping its comments and layout: a list that only
    /// lost items and gained items at its end keeps the comments of the items that stay;
    /// a reordered list is written anew. Nothing is added to the update's `added_*`.
    pub fn rewrite(&self, set: &PromptSet) -> Result<PromptFileUpdate, PromptError> {
        let mut doc = parse(&self.text, &self.path)?;
        let kind = match set.class.kind {
            ClassKind::Object => "object",
            ClassKind::Texture => "texture",
        };
        for (table, key, text) in [
            ("class", "id", set.class.id.as_str()),
            ("class", "name", &set.class.name),
            ("class", "kind", kind),
            ("llm", "source", &set.llm.source),
            ("descriptors", "query", &set.descriptors.query),
        ] {
            // Unchanged values keep their formatting and trailing comments; empty optional ones stay absent.
            // (`doc[table][key]` would panic on an absent key: `llm.source` and `descriptors.query` are optional.)
            let current = doc.get(table).and_then(|t| t.get(key));
            let (present, unchanged) = (current.is_some(), current.and_then(Item::as_str) == Some(text));
            if !unchanged && (present || !text.is_empty()) {
                doc[table][key] = toml_edit::value(text);
            }
        }
        for (table, key, list) in [
            ("class", "datasets", &set.class.datasets),
            ("templates", "bases", &set.templates.bases),
            ("templates", "domains", &set.templates.domains),
            ("templates", "normal_states", &set.templates.normal_states),
            ("templates", "abnormal_states", &set.templates.abnormal_states),
            ("llm", "queries", &set.llm.queries),
            ("llm", "normal", &set.llm.normal),
            ("llm", "abnormal", &set.llm.abnormal),
            ("descriptors", "abnormal", &set.descriptors.abnormal),
        ] {
            let present = doc.get(table).and_then(|t| t.get(key)).is_some();
            if present || !list.is_empty() {
                sync(&mut doc[table][key], list);
            }
        }
        let text = doc.to_string();
        // The edited file must read back as exactly `set`.
        if PromptSet::from_toml(&text, &self.path)? != *set {
            return Err(PromptError::Invalid {
                path: self.path.clone(),
                reason: "the edited file does not read back as the prompts it should hold; nothing written".into(),
            });
        }
        Ok(PromptFileUpdate {
            path: self.path.clone(),
            creates: !self.exists,
            added_normal: Vec::new(),
            added_abnormal: Vec::new(),
            added_descriptors: Vec::new(),
            text,
        })
    }
}

/// `set` with the prompts of `generated` it lacks appended (compared case- and
/// whitespace-insensitively with `{c}` filled in), the queries recorded and `source`
/// added to the provenance.
pub fn with_generated(set: &PromptSet, generated: &Generated, source: &str) -> PromptSet {
    let name = &set.class.name;
    let extended = |existing: &[String], new: &[String]| {
        let mut seen: std::collections::HashSet<String> =
            existing.iter().map(|p| normalize(&p.replace("{c}", name))).collect();
        let mut list = existing.to_vec();
        list.extend(new.iter().filter(|p| seen.insert(normalize(&p.replace("{c}", name)))).cloned());
        list
    };
    let mut merged = set.clone();
    merged.llm.normal = extended(&set.llm.normal, &generated.normal);
    merged.llm.abnormal = extended(&set.llm.abnormal, &generated.abnormal);
    merged.descriptors.abnormal = extended(&set.descriptors.abnormal, &generated.descriptors);
    merged.llm.queries = extended(&set.llm.queries, &generated.queries);
    let previous = set.llm.source.trim();
    merged.llm.source = if previous.is_empty() || previous == source {
        source.to_owned()
    } else {
        format!("{previous}; then {source}")
    };
    merged.descriptors.query = generated.descriptor_query.clone();
    merged
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

/// Makes the array of strings at `item` hold `wanted`. When `wanted` is the array's
/// items that stay, in their order, followed by new ones, only the dropped items are
/// removed (the others keep their comments) and the new ones appended; otherwise the
/// array is written anew.
fn sync(item: &mut Item, wanted: &[String]) {
    let current: Vec<Option<String>> = item
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if current.len() == wanted.len() && current.iter().zip(wanted).all(|(c, w)| c.as_deref() == Some(w.as_str())) {
        return;
    }
    let mut unclaimed: Vec<&String> = wanted.iter().collect();
    let staying: Vec<bool> = current
        .iter()
        .map(|c| match unclaimed.iter().position(|w| Some(w.as_str()) == c.as_deref()) {
            Some(i) => {
                unclaimed.remove(i);
                true
            }
            None => false,
        })
        .collect();
    let kept: Vec<&str> = current.iter().zip(&staying).filter(|(_, s)| **s).filter_map(|(c, _)| c.as_deref()).collect();
    let in_order = kept.len() <= wanted.len() && kept.iter().zip(wanted).all(|(k, w)| *k == w.as_str());
    match item.as_array_mut() {
        Some(array) if in_order => {
            for index in (0..staying.len()).rev().filter(|&i| !staying[i]) {
                array.remove(index);
            }
        }
        Some(array) => array.clear(),
        None => *item = Item::Value(Value::Array(Array::new())),
    }
    let present = item.as_array().map_or(0, Array::len);
    append(item, &wanted[present..]);
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
