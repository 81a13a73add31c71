//! TF-IDF embedding with the same maths as scikit-learn's `TfidfVectorizer` defaults.
//!
//! What "the same" means, step by step, as scikit-learn does it:
//! 1. lowercase the whole text (`str.lower`);
//! 2. tokens are the matches of `(?u)\b\w\w+\b`, i.e. maximal runs of two or more
//!    characters that Python's `re` calls word characters (see [`super::word_chars`]);
//! 3. stop words are dropped after tokenization;
//! 4. a term's weight is its raw count times its idf, where
//!    `idf = ln((1 + n_docs) / (1 + df)) + 1` (`smooth_idf=True`);
//! 5. the vector is divided by its l2 norm.
//!
//! `max_features` keeps the terms with the highest total count over the corpus; ties are
//! broken by term order (a stable sort over the alphabetically sorted vocabulary), which is
//! what scikit-learn's `_limit_features` does.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stop_words::ENGLISH_STOP_WORDS;
use super::word_chars::{PYTHON_LOWER_EXCEPTIONS, PYTHON_WORD_CHAR_RANGES};

/// The token pattern scikit-learn uses by default; the only one implemented here.
pub const DEFAULT_TOKEN_PATTERN: &str = r"(?u)\b\w\w+\b";

/// Which stop words a model drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopWords {
    /// A named built-in list; only `"english"` exists, as in scikit-learn.
    Named(String),
    /// An explicit list, as scikit-learn accepts.
    List(Vec<String>),
}

/// A sparse vector: `(term_idx, weight)` pairs sorted by `term_idx`, l2-normalised.
pub type SparseVector = Vec<(u32, f32)>;

/// A fitted TF-IDF model: the vocabulary, one idf per term, and the settings that shape
/// tokenization. Immutable once built; deltas are embedded with the bundle's model.
#[derive(Debug, Clone)]
pub struct TfidfModel {
    /// Term at each index, in index order (alphabetical when fitted here or by scikit-learn).
    terms: Vec<String>,
    /// Term to index, for embedding.
    term_idx: HashMap<String, u32>,
    /// Inverse document frequency of each term, by index.
    idf: Vec<f64>,
    /// Stop words dropped after tokenization (empty when none).
    stop_words: std::collections::HashSet<String>,
    /// How the stop words were specified, kept for the model file and the fingerprint.
    stop_words_setting: Option<StopWords>,
    /// sha256 over the canonical form of terms, idf and settings.
    fingerprint: String,
}

/// How to fit a model on a corpus.
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Keep only this many terms, by total count over the corpus.
    pub max_features: Option<usize>,
    /// Stop words to drop; `None` keeps every token.
    pub stop_words: Option<StopWords>,
}

/// Counts gathered over a corpus, from which a model is fitted. Fed one document at a time
/// so that fitting a large corpus needs memory for the vocabulary only.
#[derive(Debug, Default)]
pub struct TermStatistics {
    /// Number of documents seen.
    n_docs: u64,
    /// Per term: (document frequency, total count over the corpus).
    counts: HashMap<String, (u64, u64)>,
    /// The stop words that `add_document` drops.
    stop_words: std::collections::HashSet<String>,
}

impl TermStatistics {
    /// Starts counting with the stop words a model will use.
    pub fn new(stop_words: Option<&StopWords>) -> anyhow::Result<Self> {
        Ok(TermStatistics {
            n_docs: 0,
            counts: HashMap::new(),
            stop_words: resolve_stop_words(stop_words)?,
        })
    }

    /// Counts the terms of one document.
    pub fn add_document(&mut self, text: &str) {
        self.n_docs += 1;
        let mut doc_counts: HashMap<&str, u64> = HashMap::new();
        let lowered = python_lower(text);
        for token in python_word_tokens(&lowered) {
            if self.stop_words.contains(token) {
                continue;
            }
            *doc_counts.entry(token).or_insert(0) += 1;
        }
        for (token, count) in doc_counts {
            match self.counts.get_mut(token) {
                Some(entry) => {
                    entry.0 += 1;
                    entry.1 += count;
                }
                None => {
                    self.counts.insert(token.to_owned(), (1, count));
                }
            }
        }
    }

    /// Number of documents counted so far.
    pub fn n_docs(&self) -> u64 {
        self.n_docs
    }

    /// Fits the model: sorted vocabulary, optional `max_features` cut, smooth idf.
    pub fn fit(self, options: &FitOptions) -> anyhow::Result<TfidfModel> {
        let mut terms: Vec<(String, (u64, u64))> = self.counts.into_iter().collect();
        terms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(limit) = options.max_features
            && terms.len() > limit
        {
            // Stable sort by descending total count over the alphabetical order keeps
            // scikit-learn's tie order; the kept terms are then re-sorted alphabetically.
            let mut order: Vec<usize> = (0..terms.len()).collect();
            order.sort_by(|&a, &b| terms[b].1.1.cmp(&terms[a].1.1));
            let mut keep = vec![false; terms.len()];
            for &term_idx in &order[..limit] {
                keep[term_idx] = true;
            }
            let mut kept_idx = 0;
            terms.retain(|_| {
                let kept = keep[kept_idx];
                kept_idx += 1;
                kept
            });
        }
        if terms.is_empty() {
            bail!(
                "empty vocabulary: no document has a token of two or more word characters that is not a stop word"
            );
        }
        let n_docs = self.n_docs as f64;
        let idf = terms
            .iter()
            .map(|(_, (df, _))| ((1.0 + n_docs) / (1.0 + *df as f64)).ln() + 1.0)
            .collect();
        let terms = terms.into_iter().map(|(term, _)| term).collect();
        TfidfModel::from_parts(terms, idf, options.stop_words.clone())
    }
}

fn resolve_stop_words(
    setting: Option<&StopWords>,
) -> anyhow::Result<std::collections::HashSet<String>> {
    Ok(match setting {
        None => Default::default(),
        Some(StopWords::Named(name)) if name == "english" => {
            ENGLISH_STOP_WORDS.iter().map(|w| w.to_string()).collect()
        }
        Some(StopWords::Named(other)) => {
            bail!("stop_words {other:?} is not supported: use \"english\", a list, or none")
        }
        Some(StopWords::List(words)) => words.iter().cloned().collect(),
    })
}

/// The model file as written into a bundle and as exported from scikit-learn by
/// `scripts/export_sklearn_vectorizer.py`.
#[derive(Debug, Serialize, Deserialize)]
struct ModelFile {
    format: String,
    format_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sklearn_version: Option<String>,
    vocabulary: serde_json::Map<String, serde_json::Value>,
    idf: Vec<f64>,
    settings: serde_json::Map<String, serde_json::Value>,
}

const MODEL_FORMAT_OURS: &str = "deltacache-tfidf";
const MODEL_FORMAT_SKLEARN: &str = "deltacache-sklearn-tfidf";

impl TfidfModel {
    /// Builds a model from its parts, checking that they agree.
    pub fn from_parts(
        terms: Vec<String>,
        idf: Vec<f64>,
        stop_words_setting: Option<StopWords>,
    ) -> anyhow::Result<Self> {
        if terms.len() != idf.len() {
            bail!(
                "model has {} terms but {} idf values",
                terms.len(),
                idf.len()
            );
        }
        if terms.len() > u32::MAX as usize {
            bail!("model has more than 2^32 terms");
        }
        let mut term_idx = HashMap::with_capacity(terms.len());
        for (idx, term) in terms.iter().enumerate() {
            if term_idx.insert(term.clone(), idx as u32).is_some() {
                bail!("model vocabulary holds the term {term:?} twice");
            }
        }
        if let Some(bad) = idf.iter().position(|v| !v.is_finite() || *v <= 0.0) {
            bail!(
                "model idf for term {:?} is {}: must be a positive number",
                terms[bad],
                idf[bad]
            );
        }
        let stop_words = resolve_stop_words(stop_words_setting.as_ref())?;
        let fingerprint = fingerprint(&terms, &idf, stop_words_setting.as_ref());
        Ok(TfidfModel {
            terms,
            term_idx,
            idf,
            stop_words,
            stop_words_setting,
            fingerprint,
        })
    }

    /// Loads a model file: either one this crate wrote, or one exported from scikit-learn.
    /// Settings this crate does not implement are refused, naming the setting.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("read model {}", path.display()))?;
        Self::from_json(&bytes).with_context(|| format!("load model {}", path.display()))
    }

    /// Parses a model file's bytes (see [`TfidfModel::load`]).
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Self> {
        let file: ModelFile = serde_json::from_slice(bytes).context("parse model JSON")?;
        if file.format != MODEL_FORMAT_OURS && file.format != MODEL_FORMAT_SKLEARN {
            bail!(
                "format {:?} is not a TF-IDF model: expected {MODEL_FORMAT_OURS:?} or {MODEL_FORMAT_SKLEARN:?} (export scikit-learn models with scripts/export_sklearn_vectorizer.py)",
                file.format
            );
        }
        if file.format_version != 1 {
            bail!(
                "format_version {} is not supported: this binary reads version 1",
                file.format_version
            );
        }
        check_supported_settings(&file.settings)?;
        let stop_words = match file.settings.get("stop_words") {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(
                serde_json::from_value::<StopWords>(value.clone())
                    .context("setting stop_words must be \"english\", a list of strings or null")?,
            ),
        };
        let mut terms = vec![None; file.vocabulary.len()];
        for (term, idx) in &file.vocabulary {
            let idx = idx
                .as_u64()
                .filter(|i| (*i as usize) < terms.len())
                .with_context(|| {
                    format!(
                        "vocabulary index of {term:?} is not an integer below the vocabulary size"
                    )
                })?;
            if terms[idx as usize].replace(term.clone()).is_some() {
                bail!("vocabulary index {idx} is used twice");
            }
        }
        let terms: Vec<String> = terms.into_iter().map(|t| t.unwrap_or_default()).collect();
        Self::from_parts(terms, file.idf, stop_words)
    }

    /// Serialises the model in this crate's model format.
    pub fn to_json(&self) -> Vec<u8> {
        let vocabulary = self
            .terms
            .iter()
            .enumerate()
            .map(|(idx, term)| (term.clone(), serde_json::Value::from(idx)))
            .collect();
        let mut settings = serde_json::Map::new();
        settings.insert("lowercase".into(), true.into());
        settings.insert("token_pattern".into(), DEFAULT_TOKEN_PATTERN.into());
        settings.insert(
            "stop_words".into(),
            serde_json::to_value(&self.stop_words_setting).unwrap_or(serde_json::Value::Null),
        );
        settings.insert("norm".into(), "l2".into());
        settings.insert("use_idf".into(), true.into());
        settings.insert("smooth_idf".into(), true.into());
        settings.insert("sublinear_tf".into(), false.into());
        settings.insert("ngram_range".into(), serde_json::json!([1, 1]));
        settings.insert("analyzer".into(), "word".into());
        let file = ModelFile {
            format: MODEL_FORMAT_OURS.into(),
            format_version: 1,
            sklearn_version: None,
            vocabulary,
            idf: self.idf.clone(),
            settings,
        };
        serde_json::to_vec(&file).unwrap_or_default()
    }

    /// The model's dimension (vocabulary size).
    pub fn n_terms(&self) -> usize {
        self.terms.len()
    }

    /// Terms in index order.
    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    /// The idf of each term, in index order.
    pub fn idf(&self) -> &[f64] {
        &self.idf
    }

    /// A digest identifying the model; deltas and bundles are bound to it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Embeds a text: l2-normalised TF-IDF weights of its known terms, sorted by term index.
    /// A text with no known term gives an empty vector.
    pub fn embed(&self, text: &str) -> SparseVector {
        self.embed_f64(text)
            .into_iter()
            .map(|(idx, w)| (idx, w as f32))
            .collect()
    }

    /// How many of a text's terms (stop words aside) the model knows, and how many it does
    /// not: words it has no dimension for cannot be found by.
    pub fn coverage(&self, text: &str) -> TermCoverage {
        let lowered = python_lower(text);
        let mut coverage = TermCoverage::default();
        for token in python_word_tokens(&lowered) {
            if self.stop_words.contains(token) {
                continue;
            }
            if self.term_idx.contains_key(token) {
                coverage.known += 1;
            } else {
                coverage.unknown += 1;
            }
        }
        coverage
    }

    /// The distinct terms of a text (stop words aside) outside the model's vocabulary.
    pub fn unknown_terms(&self, text: &str) -> Vec<String> {
        let lowered = python_lower(text);
        let mut unknown: Vec<String> = python_word_tokens(&lowered)
            .filter(|t| !self.stop_words.contains(*t) && !self.term_idx.contains_key(*t))
            .map(str::to_owned)
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        unknown
    }

    /// Like [`TfidfModel::embed`] with full precision, as scikit-learn computes it.
    pub fn embed_f64(&self, text: &str) -> Vec<(u32, f64)> {
        let lowered = python_lower(text);
        let mut counts: Vec<(u32, f64)> = Vec::new();
        for token in python_word_tokens(&lowered) {
            if self.stop_words.contains(token) {
                continue;
            }
            if let Some(&idx) = self.term_idx.get(token) {
                counts.push((idx, 1.0));
            }
        }
        counts.sort_unstable_by_key(|(idx, _)| *idx);
        counts.dedup_by(|next, kept| {
            if next.0 == kept.0 {
                kept.1 += 1.0;
                true
            } else {
                false
            }
        });
        for (idx, weight) in counts.iter_mut() {
            *weight *= self.idf[*idx as usize];
        }
        let norm = counts.iter().map(|(_, w)| w * w).sum::<f64>().sqrt();
        if norm > 0.0 {
            for (_, weight) in counts.iter_mut() {
                *weight /= norm;
            }
        }
        counts
    }
}

/// A text's terms, by whether the model knows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TermCoverage {
    /// Terms in the model's vocabulary.
    pub known: u64,
    /// Terms outside it.
    pub unknown: u64,
}

/// Refuses every setting that changes the maths in a way this crate does not implement.
fn check_supported_settings(
    settings: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    use serde_json::Value;
    let expect = |key: &str, ok: &dyn Fn(&Value) -> bool, what: &str| -> anyhow::Result<()> {
        match settings.get(key) {
            None => Ok(()),
            Some(value) if ok(value) => Ok(()),
            Some(value) => bail!(
                "setting {key} = {value} is not supported: only {what} is implemented; refit the vectorizer with {key} at its default"
            ),
        }
    };
    expect("lowercase", &|v| v == &Value::Bool(true), "lowercase=True")?;
    expect(
        "token_pattern",
        &|v| v.as_str() == Some(DEFAULT_TOKEN_PATTERN) || v.is_null(),
        "the default token_pattern r\"(?u)\\b\\w\\w+\\b\"",
    )?;
    expect("norm", &|v| v.as_str() == Some("l2"), "norm=\"l2\"")?;
    expect("use_idf", &|v| v == &Value::Bool(true), "use_idf=True")?;
    expect(
        "sublinear_tf",
        &|v| v == &Value::Bool(false),
        "sublinear_tf=False",
    )?;
    expect("binary", &|v| v == &Value::Bool(false), "binary=False")?;
    expect(
        "ngram_range",
        &|v| v == &serde_json::json!([1, 1]),
        "ngram_range=(1, 1)",
    )?;
    expect(
        "analyzer",
        &|v| v.as_str() == Some("word"),
        "analyzer=\"word\"",
    )?;
    expect(
        "tokenizer",
        &|v| v.is_null(),
        "the built-in tokenizer (tokenizer=None)",
    )?;
    expect(
        "preprocessor",
        &|v| v.is_null(),
        "the built-in preprocessor (preprocessor=None)",
    )?;
    expect("strip_accents", &|v| v.is_null(), "strip_accents=None")?;
    Ok(())
}

fn fingerprint(terms: &[String], idf: &[f64], stop_words: Option<&StopWords>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"deltacache-tfidf-v1\0lowercase\0token_pattern\0");
    hasher.update(DEFAULT_TOKEN_PATTERN.as_bytes());
    hasher.update(b"\0norm=l2\0stop_words=");
    hasher.update(
        serde_json::to_vec(&stop_words)
            .unwrap_or_default()
            .as_slice(),
    );
    hasher.update((terms.len() as u64).to_le_bytes());
    for (term, idf) in terms.iter().zip(idf) {
        hasher.update(term.as_bytes());
        hasher.update([0u8]);
        hasher.update(idf.to_bits().to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Lowercases like Python's `str.lower`.
///
/// Rust's `str::to_lowercase` implements the same full case mapping (including the
/// context-dependent final sigma); the few code points where the Unicode versions of
/// Python 3.11 and this Rust toolchain disagree are patched from a generated table.
pub fn python_lower(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return std::borrow::Cow::Owned(text.to_ascii_lowercase());
        }
        return std::borrow::Cow::Borrowed(text);
    }
    if PYTHON_LOWER_EXCEPTIONS.is_empty()
        || !text.chars().any(|c| {
            PYTHON_LOWER_EXCEPTIONS
                .binary_search_by_key(&c, |e| e.0)
                .is_ok()
        })
    {
        return std::borrow::Cow::Owned(text.to_lowercase());
    }
    let mut out = String::with_capacity(text.len());
    let mut run_start = 0;
    for (pos, c) in text.char_indices() {
        if let Ok(found) = PYTHON_LOWER_EXCEPTIONS.binary_search_by_key(&c, |e| e.0) {
            out.push_str(&text[run_start..pos].to_lowercase());
            out.push_str(PYTHON_LOWER_EXCEPTIONS[found].1);
            run_start = pos + c.len_utf8();
        }
    }
    out.push_str(&text[run_start..].to_lowercase());
    std::borrow::Cow::Owned(out)
}

/// Whether Python 3.11's `re` module matches `c` with `(?u)\w`.
pub fn is_python_word_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    let cp = c as u32;
    PYTHON_WORD_CHAR_RANGES
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// The matches of `(?u)\b\w\w+\b` in `text`: maximal runs of at least two word characters.
pub fn python_word_tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        loop {
            let (start, first) = chars.next()?;
            if !is_python_word_char(first) {
                continue;
            }
            let mut end = start + first.len_utf8();
            let mut n_chars = 1;
            while let Some(&(pos, c)) = chars.peek() {
                if !is_python_word_char(c) {
                    break;
                }
                end = pos + c.len_utf8();
                n_chars += 1;
                chars.next();
            }
            if n_chars >= 2 {
                return Some(&text[start..end]);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_tokens(text: &str, expected: &[&str]) {
        let lowered = python_lower(text);
        let tokens: Vec<&str> = python_word_tokens(&lowered).collect();
        assert_eq!(tokens, expected, "tokens of {text:?}");
    }

    #[test]
    fn tokenizes_like_python() {
        check_tokens("Hello, World!", &["hello", "world"]);
        check_tokens("a b cd", &["cd"]);
        check_tokens("snake_case x_1 __", &["snake_case", "x_1", "__"]);
        check_tokens("don't e-mail", &["don", "mail"]);
        check_tokens("", &[]);
        check_tokens("Straße ΣΊΣΥΦΟΣ", &["straße", "σίσυφος"]);
    }

    #[test]
    fn fit_matches_hand_computed_idf() {
        let mut stats = TermStatistics::new(None).unwrap();
        stats.add_document("apple banana");
        stats.add_document("apple cherry cherry");
        let model = stats.fit(&FitOptions::default()).unwrap();
        assert_eq!(model.terms(), ["apple", "banana", "cherry"]);
        let idf_apple = (3.0f64 / 3.0).ln() + 1.0;
        let idf_cherry = (3.0f64 / 2.0).ln() + 1.0;
        assert!((model.idf()[0] - idf_apple).abs() < 1e-12);
        let v = model.embed_f64("cherry apple cherry");
        let norm = ((idf_apple).powi(2) + (2.0 * idf_cherry).powi(2)).sqrt();
        assert_eq!(v[0].0, 0);
        assert!((v[0].1 - idf_apple / norm).abs() < 1e-12);
        assert!((v[1].1 - 2.0 * idf_cherry / norm).abs() < 1e-12);
    }

    #[test]
    fn max_features_breaks_ties_alphabetically() {
        let mut stats = TermStatistics::new(None).unwrap();
        stats.add_document("zz yy xx xx");
        let model = stats
            .fit(&FitOptions {
                max_features: Some(2),
                stop_words: None,
            })
            .unwrap();
        assert_eq!(model.terms(), ["xx", "yy"]);
    }

    #[test]
    fn model_file_round_trips_with_same_fingerprint() {
        let mut stats = TermStatistics::new(Some(&StopWords::Named("english".into()))).unwrap();
        stats.add_document("the quick brown fox");
        let model = stats
            .fit(&FitOptions {
                max_features: None,
                stop_words: Some(StopWords::Named("english".into())),
            })
            .unwrap();
        let loaded = TfidfModel::from_json(&model.to_json()).unwrap();
        assert_eq!(loaded.fingerprint(), model.fingerprint());
        assert_eq!(loaded.embed("The fox"), model.embed("the FOX"));
    }
}
