//! Search: the TF-IDF embedding, the local vector index and query-time filtering.

pub mod filter;
pub mod index;
pub mod stop_words;
pub mod tfidf;
pub mod word_chars;
