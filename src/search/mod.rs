//! Search: the TF-IDF embedding and the local vector index.

pub mod index;
pub mod stop_words;
pub mod tfidf;
pub mod word_chars;
