//! A class's prompt set: one human-editable TOML file under `prompts/`.
//!
//! It holds the parts of ALFA's unified template (bases, domains, state phrases),
//! the LLM-written prompts per label, and the descriptors used for explanations.
//! `{c}` stands for the class name everywhere; `{domain}` and `{state}` only in bases.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PromptError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSet {
    pub class: ClassInfo,
    pub templates: Templates,
    pub llm: LlmPrompts,
    pub descriptors: Descriptors,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInfo {
    /// The dataset's spelling (`metal_nut`); the file is `<id>.toml`.
    pub id: String,
    /// The readable name put in place of `{c}` (`metal nut`).
    pub name: String,
    #[serde(default)]
    pub datasets: Vec<String>,
    pub kind: ClassKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassKind {
    Object,
    Texture,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    /// Sentences with `{domain}` and `{state}`, e.g. `a cropped {domain} of the {state}.`
    pub bases: Vec<String>,
    /// `photo`, `industrial photo`, `textural photo`, ...
    pub domains: Vec<String>,
    pub normal_states: Vec<String>,
    pub abnormal_states: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmPrompts {
    /// Who or what wrote the prompts (model, date).
    #[serde(default)]
    pub source: String,
    /// The questions asked.
    #[serde(default)]
    pub queries: Vec<String>,
    pub normal: Vec<String>,
    pub abnormal: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptors {
    #[serde(default)]
    pub query: String,
    pub abnormal: Vec<String>,
}

/// Where a prompt came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptSource {
    Template,
    Llm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub text: String,
    pub source: PromptSource,
}

/// The prompts of one class, ready to encode: `T+`, `T-` and the descriptors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpandedPrompts {
    pub class: String,
    pub normal: Vec<Prompt>,
    pub abnormal: Vec<Prompt>,
    pub descriptors: Vec<String>,
}

impl PromptSet {
    /// Reads and checks a prompt file; errors name the file, line and problem.
    pub fn from_file(path: &Path) -> Result<Self, PromptError> {
        let text = std::fs::read_to_string(path).map_err(|source| PromptError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses `text`; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, PromptError> {
        let set: Self = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            PromptError::Parse {
                path: path.to_owned(),
                line,
                reason: e.message().to_owned(),
            }
        })?;
        set.validate(path)?;
        Ok(set)
    }

    fn validate(&self, path: &Path) -> Result<(), PromptError> {
        let invalid = |reason: String| PromptError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let lists: [(&str, &Vec<String>); 7] = [
            ("templates.bases", &self.templates.bases),
            ("templates.domains", &self.templates.domains),
            ("templates.normal_states", &self.templates.normal_states),
            ("templates.abnormal_states", &self.templates.abnormal_states),
            ("llm.normal", &self.llm.normal),
            ("llm.abnormal", &self.llm.abnormal),
            ("descriptors.abnormal", &self.descriptors.abnormal),
        ];
        for (name, list) in lists {
            if let Some(i) = list.iter().position(|s| s.trim().is_empty()) {
                return Err(invalid(format!("`{name}` entry {} is empty", i + 1)));
            }
        }
        if self.class.name.trim().is_empty() {
            return Err(invalid("`class.name` is empty".into()));
        }
        // A label needs at least one prompt: from the templates or the LLM.
        let templates = self.templates.bases.len() * self.templates.domains.len();
        for (label, states, llm) in [
            ("normal", &self.templates.normal_states, &self.llm.normal),
            ("abnormal", &self.templates.abnormal_states, &self.llm.abnormal),
        ] {
            if templates * states.len() == 0 && llm.is_empty() {
                return Err(invalid(format!(
                    "the {label} label has no prompts: give templates (bases, domains, {label}_states) or llm.{label}"
                )));
            }
        }
        if let Some(b) = self.templates.bases.iter().find(|b| !b.contains("{state}")) {
            return Err(invalid(format!("template base {b:?} lacks `{{state}}`")));
        }
        Ok(())
    }

    /// Expands the unified template (every base x domain x state) and fills `{c}`;
    /// `a` before a vowel sound becomes `an` (see [`with_articles`]).
    /// Duplicates (after filling) are dropped, keeping the first.
    pub fn expand(&self) -> ExpandedPrompts {
        let c = &self.class.name;
        let fill = |s: &str| with_articles(&s.replace("{c}", c));
        let label = |states: &[String], llm: &[String]| {
            let mut prompts = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut push = |text: String, source| {
                if seen.insert(normalize(&text)) {
                    prompts.push(Prompt { text, source });
                }
            };
            for base in &self.templates.bases {
                for domain in &self.templates.domains {
                    for state in states {
                        let text = base.replace("{domain}", domain).replace("{state}", &fill(state));
                        push(fill(&text), PromptSource::Template);
                    }
                }
            }
            for p in llm {
                push(fill(p), PromptSource::Llm);
            }
            prompts
        };
        ExpandedPrompts {
            class: self.class.id.clone(),
            normal: label(&self.templates.normal_states, &self.llm.normal),
            abnormal: label(&self.templates.abnormal_states, &self.llm.abnormal),
            descriptors: self.descriptors.abnormal.iter().map(|d| fill(d)).collect(),
        }
    }

    /// This set for another class name (the generic set used for an unknown class).
    pub fn renamed(&self, id: &str, name: &str) -> Self {
        let mut set = self.clone();
        set.class.id = id.to_owned();
        set.class.name = name.to_owned();
        set
    }
}

/// `a` before a word that starts with a vowel sound becomes `an`. The parts of a prompt
/// are written apart (`a {domain} of a {state}.` with `industrial photo`, `abnormal {c}`,
/// a class name), so only the filled-in text shows which article it needs. Decided by
/// spelling: a vowel letter, except the "you" and "wuh" sounds of `uni-`, `use`, `eu-`,
/// `one`...; a word starting with a consonant letter keeps `a`.
pub fn with_articles(text: &str) -> String {
    const YOU_OR_WUH: [&str; 10] = ["uni", "usa", "use", "usu", "uti", "ure", "u-", "eu", "one", "once"];
    let vowel_sound = |word: &str| {
        let word = word.to_lowercase();
        word.starts_with(['a', 'e', 'i', 'o', 'u']) && !YOU_OR_WUH.iter().any(|p| word.starts_with(p))
    };
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        out.push(match *word {
            "a" if vowel_sound(next) => "an",
            "A" if vowel_sound(next) => "An",
            other => other,
        });
    }
    out.join(" ")
}

/// Case- and whitespace-insensitive form, for de-duplication.
pub fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The path a class's prompt file has in a prompts folder.
pub fn file_for(dir: &Path, class: &str) -> PathBuf {
    dir.join(format!("{class}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_becomes_an_before_vowel_sounds_only() {
        assert_eq!(with_articles("a industrial photo of a abnormal bottle."), "an industrial photo of an abnormal bottle.");
        assert_eq!(with_articles("A object with a imperfect edge"), "An object with an imperfect edge");
        assert_eq!(with_articles("a unblemished hazelnut"), "an unblemished hazelnut");
        // Consonant sounds keep `a`; so does a trailing `a` and `an` as written.
        for kept in ["a uniform texture", "a one-piece part", "a photo of a", "an apple", "a European plug", "a usable part", "a"] {
            assert_eq!(with_articles(kept), kept);
        }
    }
}
