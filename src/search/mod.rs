//! Search: the TF-IDF embedding, the local vector index, and the vector backends (local or
//! Pinecone).

pub mod backend;
pub mod index;
pub mod pinecone;
pub mod pinecone_sync;
pub mod stop_words;
pub mod tfidf;
pub mod word_chars;
