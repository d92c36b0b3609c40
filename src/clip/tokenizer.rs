//! CLIP's byte-level BPE through the `tokenizers` crate, framed as OpenCLIP does:
//! `<start_of_text> text <end_of_text>`, cut to the context length with the last
//! id forced to `<end_of_text>`, zero-padded.
//!
//! CLIP's `tokenizer.json` is built into the binary ([`TokenizerSource::Embedded`]), so
//! no tokenizer is ever downloaded; a file (`--tokenizer FILE`, or a model folder's own
//! `tokenizer.json`) is used instead when there is one.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use candle_core::{Device, Tensor};

use super::ClipError;

pub const START_OF_TEXT: u32 = 49406;
pub const END_OF_TEXT: u32 = 49407;

/// CLIP's byte-level BPE (49408 tokens) in the Hugging Face `tokenizers` format,
/// gzip-compressed (3.6 MB of JSON, 0.6 MB compressed). It is `../shared/clip/tokenizer.json`,
/// built from the `bpe_simple_vocab_16e6.txt.gz` that `open_clip_torch` ships (MIT licence,
/// OpenAI): the vocabulary of `openai/clip-vit-base-patch32`'s `tokenizer.json` on the hub,
/// which every OpenCLIP model of the CLIP family shares. Regenerate with
/// `gzip -9 -n -c ../shared/clip/tokenizer.json > assets/clip_tokenizer.json.gz`.
const EMBEDDED_GZ: &[u8] = include_bytes!("../../assets/clip_tokenizer.json.gz");

/// Where a `tokenizer.json` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// A file: `--tokenizer FILE`, or the model's own `tokenizer.json`.
    File(PathBuf),
    /// CLIP's, built into the binary.
    Embedded,
}

impl TokenizerSource {
    /// `file` when there is one, else the embedded tokenizer.
    pub fn or_embedded(file: Option<PathBuf>) -> Self {
        file.map_or(Self::Embedded, Self::File)
    }
}

/// For messages: `tokenizer FILE`, or `the embedded CLIP tokenizer`.
impl fmt::Display for TokenizerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "tokenizer {}", path.display()),
            Self::Embedded => f.write_str("the embedded CLIP tokenizer"),
        }
    }
}

/// The embedded `tokenizer.json`, decompressed on first use (once per process).
pub fn embedded_json() -> Result<&'static [u8], String> {
    static JSON: LazyLock<Result<Vec<u8>, String>> = LazyLock::new(|| {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(EMBEDDED_GZ).read_to_end(&mut json).map_err(|e| e.to_string())?;
        Ok(json)
    });
    JSON.as_deref().map_err(Clone::clone)
}

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context_length: usize,
}

impl ClipTokenizer {
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, ClipError> {
        Self::load(&TokenizerSource::File(path.to_owned()), context_length)
    }

    /// The tokenizer from `source`, checked to be CLIP's vocabulary.
    pub fn load(source: &TokenizerSource, context_length: usize) -> Result<Self, ClipError> {
        let fail = |reason: String| ClipError::Tokenizer { tokenizer: source.clone(), reason };
        let inner = match source {
            TokenizerSource::File(path) => tokenizers::Tokenizer::from_file(path),
            TokenizerSource::Embedded => tokenizers::Tokenizer::from_bytes(embedded_json().map_err(fail)?),
        }
        .map_err(|e| fail(e.to_string()))?;
        let check = |token: &str, id: u32| match inner.token_to_id(token) {
            Some(found) if found == id => Ok(()),
            found => Err(fail(format!("not CLIP's vocabulary: `{token}` is {found:?}, expected {id}"))),
        };
        check("<|startoftext|>", START_OF_TEXT)?;
        check("<|endoftext|>", END_OF_TEXT)?;
        Ok(Self {
            inner,
            context_length,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Token ids of one text, framed and truncated as OpenCLIP, not padded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ClipError> {
        let mut ids = self.encode_untruncated(text)?;
        if ids.len() > self.context_length {
            ids.truncate(self.context_length);
            ids[self.context_length - 1] = END_OF_TEXT;
        }
        Ok(ids)
    }

    /// How many tokens `text` takes with its start and end markers, before the cut to
    /// the context: a prompt longer than the context loses its end silently in CLIP.
    pub fn token_count(&self, text: &str) -> Result<usize, ClipError> {
        Ok(self.encode_untruncated(text)?.len())
    }

    fn encode_untruncated(&self, text: &str) -> Result<Vec<u32>, ClipError> {
        if text.trim().is_empty() {
            return Err(ClipError::EmptyText);
        }
        let cleaned = unescape_html(&unescape_html(text));
        let encoding = self
            .inner
            .encode(cleaned.trim(), false)
            .map_err(|e| ClipError::Tokenize {
                text: text.to_owned(),
                reason: e.to_string(),
            })?;
        let mut ids = Vec::with_capacity(encoding.len() + 2);
        ids.push(START_OF_TEXT);
        ids.extend_from_slice(encoding.get_ids());
        ids.push(END_OF_TEXT);
        Ok(ids)
    }

    /// A batch of ids [T, L] (u32), zero-padded to the longest text, not to the
    /// context: the text tower's causal mask makes the result identical.
    pub fn batch(&self, texts: &[&str], device: &Device) -> Result<Tensor, ClipError> {
        let encoded = texts.iter().map(|t| self.encode(t)).collect::<Result<Vec<_>, _>>()?;
        let longest = encoded.iter().map(Vec::len).max().unwrap_or(2);
        let mut data = vec![0u32; texts.len() * longest];
        for (row, ids) in encoded.iter().enumerate() {
            data[row * longest..][..ids.len()].copy_from_slice(ids);
        }
        Ok(Tensor::from_vec(data, (texts.len(), longest), device)?)
    }
}

/// Python's `html.unescape` for the entities that occur in prompts (OpenCLIP's
/// `basic_clean` unescapes twice). Unknown entities stay as written, as in Python.
fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let ch = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let code = entity
                        .strip_prefix("#x")
                        .or_else(|| entity.strip_prefix("#X"))
                        .map(|hex| u32::from_str_radix(hex, 16))
                        .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>));
                    code.and_then(Result::ok).and_then(char::from_u32)
                }
            };
            ch.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_entities_unescape_like_python() {
        assert_eq!(unescape_html("a &amp; b"), "a & b");
        assert_eq!(unescape_html("&lt;x&gt; &#39;q&#x27;"), "<x> 'q'");
        assert_eq!(unescape_html("R&D &unknown; &"), "R&D &unknown; &");
        assert_eq!(unescape_html(&unescape_html("&amp;amp;")), "&");
    }
}
