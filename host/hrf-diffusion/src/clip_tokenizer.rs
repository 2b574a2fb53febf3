//! CLIP's byte-level BPE tokenizer, read from a diffusers `tokenizer/` folder (`vocab.json`,
//! `merges.txt`), as transformers' `CLIPTokenizer` runs it: the text NFC-normalised, runs of
//! white space made one space, lower-cased (character by character); cut into words by CLIP's
//! pattern (contractions, runs of letters, single digits, runs of other symbols; white space
//! dropped); each word's UTF-8 bytes mapped to GPT-2's byte symbols and merged by the merges'
//! ranks, the word's last symbol carrying `</w>`; then `<|startoftext|>` … `<|endoftext|>`,
//! truncated and padded to the model's length (77). A test checks the ids against transformers'.
//!
//! Special tokens written inside a prompt are not recognised (they are cut like any text).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use unicode_normalization::UnicodeNormalization;

/// CLIP's word pattern (the one transformers' CLIP tokenizer splits with).
const WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left, right) → rank: a lower rank merges first.
    ranks: HashMap<(String, String), usize>,
    /// Byte → its symbol (GPT-2's table).
    symbols: [char; 256],
    words: regex::Regex,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// Ids per prompt, specials included (77 for CLIP).
    pub max_length: usize,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// GPT-2's byte ↔ symbol table: the printable Latin-1 bytes stand for themselves, every other
/// byte for a code point from 256 up, in byte order.
fn byte_symbols() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("a code point")
        };
    }
    table
}

impl ClipTokenizer {
    /// Reads `dir/vocab.json` and `dir/merges.txt`; `pad` names the padding token (Stable
    /// Diffusion 1.x pads with `<|endoftext|>`, 2.x with `!`).
    pub fn from_folder(dir: &Path, pad: &str, max_length: usize) -> Result<Self, TokenizerError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| TokenizerError::File {
                path: path.clone(),
                message: e.to_string(),
            })
        };
        let bad = |name: &str, message: String| TokenizerError::File {
            path: dir.join(name),
            message,
        };
        let vocab: HashMap<String, u32> = serde_json::from_str(&read("vocab.json")?)
            .map_err(|e| bad("vocab.json", e.to_string()))?;
        let mut ranks = HashMap::new();
        for (i, line) in read("merges.txt")?
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .enumerate()
        {
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                bad(
                    "merges.txt",
                    format!("line {}: {line:?} is not a pair", i + 2),
                )
            })?;
            ranks.insert((a.to_string(), b.to_string()), i);
        }
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| bad("vocab.json", format!("has no {t:?}")))
        };
        let (bos, eos, pad) = (id("<|startoftext|>")?, id("<|endoftext|>")?, id(pad)?);
        Ok(Self {
            bos,
            eos,
            pad,
            vocab,
            ranks,
            symbols: byte_symbols(),
            words: regex::Regex::new(WORDS).expect("CLIP's pattern compiles"),
            max_length,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The ids of `text`, without special tokens, not truncated.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normal: String = text.nfc().collect();
        let spaced = normal.split_whitespace().collect::<Vec<_>>().join(" ");
        // Runs of white space inside become one space; the ends keep one too, but the word
        // pattern drops white space anyway.
        let lower: String = spaced.chars().flat_map(char::to_lowercase).collect();
        let mut ids = Vec::new();
        for word in self.words.find_iter(&lower) {
            ids.extend(self.word_ids(word.as_str()));
        }
        ids
    }

    /// `<|startoftext|>` + the ids (cut to fit) + `<|endoftext|>`, padded to `max_length`.
    pub fn encode_padded(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos];
        ids.extend(
            self.encode(text)
                .into_iter()
                .take(self.max_length.saturating_sub(2)),
        );
        ids.push(self.eos);
        ids.resize(self.max_length.max(ids.len()), self.pad);
        ids
    }

    /// One word's ids: its bytes as symbols, merged by rank.
    fn word_ids(&self, word: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().expect("cache").get(word) {
            return ids.clone();
        }
        let mut parts: Vec<String> = word
            .bytes()
            .map(|b| self.symbols[b as usize].to_string())
            .collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            // Merge every occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut j = 0;
            while j < parts.len() {
                if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(parts[j].clone());
                    j += 1;
                }
            }
            parts = merged;
        }
        // Every byte symbol (with and without </w>) is in CLIP's vocabulary; an incomplete one
        // maps its leftovers to <|endoftext|>, the unknown token.
        let ids: Vec<u32> = parts
            .iter()
            .map(|p| self.vocab.get(p).copied().unwrap_or(self.eos))
            .collect();
        self.cache
            .lock()
            .expect("cache")
            .insert(word.to_string(), ids.clone());
        ids
    }
}
