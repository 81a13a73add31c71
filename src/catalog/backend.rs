//! Where the top-k ids come from: the local index (the default, exact, in-process) or a
//! Pinecone index. Either way [`Catalog::join`] then reads each id's metadata locally.

use std::sync::Arc;

use super::{Catalog, SearchOutcome};
use crate::pinecone::{PineconeClient, PineconeError, densify};
use crate::search::filter::Filter;

/// Which backend to use, as configured (`--vector-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VectorBackendKind {
    /// The local index.
    #[default]
    Local,
    /// A Pinecone index.
    Pinecone,
}

/// The vector backend `/search` ranks with.
#[derive(Debug, Clone)]
pub enum VectorBackend {
    /// The version's own in-memory index ([`Catalog::search`]).
    Local,
    /// A Pinecone index kept in step by `build-base --pinecone` and `publish-delta --pinecone`.
    Pinecone(Arc<PineconeClient>),
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The remote vector backend did not answer usably (or its circuit is open).
    #[error(transparent)]
    Unavailable(#[from] PineconeError),
    /// Anything else (a metadata read failed).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl VectorBackend {
    /// `local` or `pinecone`, for `/status`.
    pub fn name(&self) -> &'static str {
        match self {
            VectorBackend::Local => "local",
            VectorBackend::Pinecone(_) => "pinecone",
        }
    }

    /// Ranks `query_text` and joins each hit with its metadata from `catalog`. A filter is
    /// applied before top-k: locally through the version's filter index, with Pinecone as
    /// its metadata filter (the upserts carry the indexed fields as metadata).
    ///
    /// With Pinecone, the catalog is only read before and after the call (no lock is held
    /// across it). A match whose id the local store lacks is skipped and counted in
    /// `deltacache_join_misses_total` and in the outcome's `missing`; matches with a score
    /// of 0 or less are dropped, as the local index never returns them.
    pub async fn search(
        &self,
        catalog: &Catalog,
        query_text: &str,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Result<SearchOutcome, SearchError> {
        let client = match self {
            VectorBackend::Local => return Ok(catalog.search(query_text, top_k, filter)?),
            VectorBackend::Pinecone(client) => client,
        };
        let model = catalog.model();
        let query = model.embed(query_text);
        if query.is_empty() {
            // No known term: nothing can score above zero, as with the local index.
            return Ok(SearchOutcome::default());
        }
        let dense = densify(&query, model.n_terms());
        let matches = client
            .query(&dense, top_k, filter.map(Filter::to_pinecone))
            .await?;
        // Matches scoring 0 or less are dropped, as the local index never returns them.
        let ranked = matches
            .into_iter()
            .filter(|found| found.score > 0.0 && found.score.is_finite())
            .map(|found| (found.id, found.score))
            .collect();
        Ok(catalog.join(ranked)?)
    }
}
