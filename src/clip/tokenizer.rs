//! CLIP's byte-level BPE through the `tokenizers` crate, framed as OpenCLIP does:
//! `<start_of_text> text <end_of_text>`, cut to the context length with the last
//! id forced to `<end_of_text>`, zero-padded.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::ClipError;

pub const START_OF_TEXT: u32 = 49406;
pub const END_OF_TEXT: u32 = 49407;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context_length: usize,
}

impl ClipTokenizer {
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, ClipError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ClipError::Tokenizer {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let check = |token: &str, id: u32| match inner.token_to_id(token) {
            Some(found) if found == id => Ok(()),
            found => Err(ClipError::Tokenizer {
                path: path.to_owned(),
                reason: format!("not CLIP's vocabulary: `{token}` is {found:?}, expected {id}"),
            }),
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
