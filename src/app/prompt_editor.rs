//! Live editing of a class's prompt set: one text box per list (one entry per line),
//! re-scoring after a pause in typing, an undo stack of applied versions, and an
//! atomic save to `prompts/<class>.toml`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::prompts::generate::Generated;
use crate::prompts::merge::{PromptFile, with_generated};
use crate::prompts::{PromptSet, ResolvedPrompts};

/// Typing pause after which the edited set is applied.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// Versions kept for undo.
const UNDO_DEPTH: usize = 50;

/// The lists of a prompt set the editor shows, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Bases,
    Domains,
    NormalStates,
    AbnormalStates,
    LlmNormal,
    LlmAbnormal,
    Descriptors,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::Bases,
        Field::Domains,
        Field::NormalStates,
        Field::AbnormalStates,
        Field::LlmNormal,
        Field::LlmAbnormal,
        Field::Descriptors,
    ];

    /// Also the text box's accessibility label.
    pub fn label(self) -> &'static str {
        match self {
            Field::Bases => "Template bases",
            Field::Domains => "Domain words",
            Field::NormalStates => "Normal state phrases",
            Field::AbnormalStates => "Abnormal state phrases",
            Field::LlmNormal => "Normal LLM prompts",
            Field::LlmAbnormal => "Abnormal LLM prompts",
            Field::Descriptors => "Descriptors",
        }
    }

    fn list(self, set: &PromptSet) -> &Vec<String> {
        match self {
            Field::Bases => &set.templates.bases,
            Field::Domains => &set.templates.domains,
            Field::NormalStates => &set.templates.normal_states,
            Field::AbnormalStates => &set.templates.abnormal_states,
            Field::LlmNormal => &set.llm.normal,
            Field::LlmAbnormal => &set.llm.abnormal,
            Field::Descriptors => &set.descriptors.abnormal,
        }
    }

    fn list_mut(self, set: &mut PromptSet) -> &mut Vec<String> {
        match self {
            Field::Bases => &mut set.templates.bases,
            Field::Domains => &mut set.templates.domains,
            Field::NormalStates => &mut set.templates.normal_states,
            Field::AbnormalStates => &mut set.templates.abnormal_states,
            Field::LlmNormal => &mut set.llm.normal,
            Field::LlmAbnormal => &mut set.llm.abnormal,
            Field::Descriptors => &mut set.descriptors.abnormal,
        }
    }
}

pub struct PromptEditor {
    /// The set the analysis uses now.
    pub applied: PromptSet,
    /// Where it was read from (`None`: built in).
    pub source: Option<PathBuf>,
    /// The class had no set of its own and uses the generic one.
    pub generic_fallback: bool,
    /// One text per field, as the user typed it.
    pub texts: Vec<String>,
    undo: Vec<PromptSet>,
    last_edit: Option<Instant>,
    /// Why the typed text is not applied (e.g. a label without prompts).
    pub error: Option<String>,
    /// Applied changes not yet saved.
    pub unsaved: bool,
}

impl PromptEditor {
    pub fn new(resolved: ResolvedPrompts) -> Self {
        let texts = texts_of(&resolved.set);
        Self {
            applied: resolved.set,
            source: resolved.path,
            generic_fallback: resolved.generic_fallback,
            texts,
            undo: Vec::new(),
            last_edit: None,
            error: None,
            unsaved: false,
        }
    }

    pub fn edited(&mut self, now: Instant) {
        self.last_edit = Some(now);
    }

    /// How long until a pending edit is applied.
    pub fn pending(&self, now: Instant) -> Option<Duration> {
        self.last_edit.map(|t| DEBOUNCE.saturating_sub(now.duration_since(t)))
    }

    /// After the pause, the typed set if it is valid and differs from the applied one.
    pub fn poll(&mut self, now: Instant) -> Option<PromptSet> {
        let since = now.duration_since(self.last_edit?);
        if since < DEBOUNCE {
            return None;
        }
        self.last_edit = None;
        let set = self.typed();
        if let Err(e) = checked(&set) {
            self.error = Some(e);
            return None;
        }
        self.error = None;
        if set == self.applied {
            return None;
        }
        self.apply(set.clone());
        Some(set)
    }

    /// The set as typed in the boxes (not checked).
    fn typed(&self) -> PromptSet {
        let mut set = self.applied.clone();
        for (field, text) in Field::ALL.iter().zip(&self.texts) {
            *field.list_mut(&mut set) = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        }
        set
    }

    /// Makes `set` the applied one, the previous one going on the undo stack.
    fn apply(&mut self, set: PromptSet) {
        self.undo.push(std::mem::replace(&mut self.applied, set));
        if self.undo.len() > UNDO_DEPTH {
            self.undo.remove(0);
        }
        self.unsaved = true;
    }

    /// Appends an LLM's new prompts to the typed set (or the applied one while the typed
    /// text is invalid) as one undoable edit, and returns the set to re-score and how many
    /// normal, abnormal and descriptor entries were new.
    pub fn add_generated(&mut self, generated: &Generated, source: &str) -> (PromptSet, [usize; 3]) {
        let typed = self.typed();
        let base = if checked(&typed).is_ok() { typed } else { self.applied.clone() };
        let merged = with_generated(&base, generated, source);
        let added = [
            merged.llm.normal.len() - base.llm.normal.len(),
            merged.llm.abnormal.len() - base.llm.abnormal.len(),
            merged.descriptors.abnormal.len() - base.descriptors.abnormal.len(),
        ];
        self.apply(merged.clone());
        self.texts = texts_of(&merged);
        self.last_edit = None;
        self.error = None;
        (merged, added)
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Back to the previously applied set, which is returned for re-scoring.
    pub fn undo(&mut self) -> Option<PromptSet> {
        let previous = self.undo.pop()?;
        self.texts = texts_of(&previous);
        self.applied = previous.clone();
        self.last_edit = None;
        self.error = None;
        self.unsaved = true;
        Some(previous)
    }

    /// Writes the applied set to the prompt file `file` (the class recipe's prompts.toml)
    /// atomically, through the same document edit as `alfa prompts generate`: the
    /// file's comments and layout stay.
    pub fn save(&mut self, file: &Path) -> Result<PathBuf, String> {
        let update = PromptFile::load_file(file, &self.applied.class.id)
            .and_then(|file| file.rewrite(&self.applied))
            .and_then(|update| update.write().map(|()| update))
            .map_err(|e| e.to_string())?;
        self.source = Some(update.path.clone());
        self.unsaved = false;
        Ok(update.path)
    }
}

fn texts_of(set: &PromptSet) -> Vec<String> {
    Field::ALL.iter().map(|f| f.list(set).join("\n")).collect()
}

/// The prompt file's own checks, by a round trip through its TOML form.
fn checked(set: &PromptSet) -> Result<(), String> {
    let text = toml::to_string(set).map_err(|e| e.to_string())?;
    PromptSet::from_toml(&text, Path::new("(edited set)")).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompts::PromptStore;

    fn editor() -> PromptEditor {
        PromptEditor::new(PromptStore { recipes: None }.resolve("bottle").unwrap())
    }

    fn field_index(field: Field) -> usize {
        Field::ALL.iter().position(|f| *f == field).unwrap()
    }

    #[test]
    fn edits_apply_after_the_pause_and_undo_restores() {
        let mut editor = editor();
        let original = editor.applied.clone();
        let start = Instant::now();
        editor.texts[field_index(Field::LlmAbnormal)].push_str("\nAn abnormal image of {c} shows a green stripe.");
        editor.edited(start);
        assert_eq!(editor.poll(start + DEBOUNCE / 2), None, "too early");
        let applied = editor.poll(start + DEBOUNCE).expect("applied after the pause");
        assert_eq!(applied.llm.abnormal.len(), original.llm.abnormal.len() + 1);
        assert_eq!(applied.llm.abnormal.last().unwrap(), "An abnormal image of {c} shows a green stripe.");
        assert_eq!(editor.undo(), Some(original.clone()));
        assert_eq!(editor.applied, original);
        assert!(!editor.can_undo());
    }

    #[test]
    fn an_invalid_set_is_not_applied() {
        let mut editor = editor();
        let start = Instant::now();
        for field in [Field::NormalStates, Field::LlmNormal] {
            editor.texts[field_index(field)].clear();
        }
        editor.edited(start);
        assert_eq!(editor.poll(start + DEBOUNCE), None);
        assert!(editor.error.as_deref().unwrap().contains("normal label has no prompts"), "{:?}", editor.error);
    }

    #[test]
    fn save_writes_a_file_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut editor = editor();
        let start = Instant::now();
        editor.texts[field_index(Field::Domains)] = "photo\nx-ray image".into();
        editor.edited(start);
        editor.poll(start + DEBOUNCE).unwrap();
        let recipes = crate::recipe::Recipes::new(dir.path());
        let path = editor.save(&recipes.prompts_file("bottle")).unwrap();
        assert_eq!(path, dir.path().join("bottle/prompts.toml"));
        let read = PromptStore::in_recipes(&recipes).resolve("bottle").unwrap();
        assert_eq!(read.set, editor.applied);
        assert_eq!(read.set.templates.domains, ["photo", "x-ray image"]);
        assert_eq!(std::fs::read_dir(dir.path().join("bottle")).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn save_keeps_the_files_comments() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/bottle.toml")).unwrap();
        let commented = shipped.replacen("abnormal = [", "abnormal = [\n    # checked by hand on line 3", 1);
        let text = format!("# my bottle notes\n{commented}");
        let recipes = crate::recipe::Recipes::new(dir.path());
        let file = recipes.prompts_file("bottle");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &text).unwrap();
        let mut editor = PromptEditor::new(PromptStore::in_recipes(&recipes).resolve("bottle").unwrap());
        let first_domain = editor.applied.templates.domains[0].clone();
        let start = Instant::now();
        editor.texts[field_index(Field::LlmAbnormal)].push_str("\nAn abnormal image of {c} shows a green stripe.");
        let domains = &mut editor.texts[field_index(Field::Domains)];
        *domains = domains.lines().skip(1).collect::<Vec<_>>().join("\n");
        editor.edited(start);
        editor.poll(start + DEBOUNCE).unwrap();
        editor.save(&file).unwrap();
        let saved = std::fs::read_to_string(&file).unwrap();
        assert!(saved.starts_with("# my bottle notes\n"), "{saved}");
        assert!(saved.contains("# checked by hand on line 3"), "{saved}");
        assert!(saved.contains("\"An abnormal image of {c} shows a green stripe.\""), "{saved}");
        let read = PromptSet::from_toml(&saved, Path::new("saved")).unwrap();
        assert_eq!(read, editor.applied);
        assert!(!read.templates.domains.contains(&first_domain));
    }
}
