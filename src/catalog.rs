//! A catalog is one loaded, servable version: the model, the vector index and the read
//! handles of the metadata store, all from the same version. Requests take the current
//! catalog once ([`CurrentCatalog::load`]) and use it to the end, so a swap never mixes
//! versions within a request.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use arc_swap::ArcSwapOption;

use crate::search::index::VectorIndex;
use crate::search::tfidf::TfidfModel;
use crate::store::filter::{Filter, FilterError, FilterIndex, bit_is_set};
use crate::store::leveldb::MetadataReaders;
use crate::store::state::{StoreVersion, VersionInfo};

/// One loaded version.
pub struct Catalog {
    /// What version this is.
    pub info: VersionInfo,
    /// The bundle's model, shared by every version descending from it.
    model: Arc<TfidfModel>,
    /// The version's vector index.
    index: VectorIndex,
    /// Read handles on clones of the version's metadata store.
    metadata: MetadataReaders,
    /// The version's filter index, in memory.
    filters: FilterIndex,
}

/// One search result: the item's id, its score and its stored JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The item's id.
    pub id: String,
    /// Cosine similarity to the query.
    pub score: f32,
    /// The item's JSON exactly as stored.
    pub metadata: Vec<u8>,
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchOutcome {
    /// Results, best first.
    pub hits: Vec<SearchHit>,
    /// Ids the index returned that the metadata store lacks (skipped).
    pub missing: usize,
}

impl Catalog {
    /// Loads a committed version: reads its index and opens `n_shards` read handles on clones
    /// made under `reader_dir`.
    pub fn open(
        version: &StoreVersion,
        model: Arc<TfidfModel>,
        reader_dir: &Path,
        n_shards: usize,
    ) -> anyhow::Result<Self> {
        Self::open_with_index(version, model, None, reader_dir, n_shards)
    }

    /// [`Catalog::open`] with the version's index already in memory (as apply leaves it),
    /// which saves reading it back.
    pub fn open_with_index(
        version: &StoreVersion,
        model: Arc<TfidfModel>,
        index: Option<VectorIndex>,
        reader_dir: &Path,
        n_shards: usize,
    ) -> anyhow::Result<Self> {
        let index = match index {
            Some(index) => index,
            None => VectorIndex::load(&version.index_path())?,
        };
        if index.n_terms() != model.n_terms() {
            bail!(
                "index of version {} has dimension {} but the model has {} terms",
                version.info.name,
                index.n_terms(),
                model.n_terms()
            );
        }
        if index.n_items() as u64 != version.info.n_items {
            bail!(
                "index of version {} holds {} items but the version records {}",
                version.info.name,
                index.n_items(),
                version.info.n_items
            );
        }
        let (metadata, filters) =
            MetadataReaders::open(&version.db_dir(), reader_dir, n_shards, |db| {
                let started = std::time::Instant::now();
                let filters = FilterIndex::load(db, &index)?;
                tracing::debug!(
                    version = %version.info.name,
                    entries = ?filters.sizes(),
                    seconds = started.elapsed().as_secs_f64(),
                    "loaded the filter index"
                );
                Ok(filters)
            })
            .with_context(|| format!("open read handles on version {}", version.info.name))?;
        let recorded = metadata.recorded_state()?;
        let expected = crate::store::leveldb::RecordedState {
            seq: version.info.seq,
            chain_digest: version.info.chain_digest.clone(),
        };
        if recorded.as_ref() != Some(&expected) {
            bail!(
                "version {} records {:?} in its database but {:?} in version.json: not trusted",
                version.info.name,
                recorded,
                expected
            );
        }
        Ok(Catalog {
            info: version.info.clone(),
            model,
            index,
            metadata,
            filters,
        })
    }

    /// The delta seq this version includes; every answer names it.
    pub fn seq(&self) -> u64 {
        self.info.seq
    }

    /// The model.
    pub fn model(&self) -> &TfidfModel {
        &self.model
    }

    /// The vector index.
    pub fn index(&self) -> &VectorIndex {
        &self.index
    }

    /// The fields a search may filter on.
    pub fn filter_fields(&self) -> &[String] {
        self.filters.fields()
    }

    /// Checks a request's `filter` object against this version's indexed fields.
    pub fn parse_filter(
        &self,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Filter, FilterError> {
        Filter::parse(object, self.filters.fields())
    }

    /// Embeds `query_text`, ranks the index (over the items `filter` admits, if any, before
    /// top-k is taken), and joins each hit with its metadata.
    pub fn search(
        &self,
        query_text: &str,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> anyhow::Result<SearchOutcome> {
        let query = self.model.embed(query_text);
        let hits = match filter {
            None => self.index.top_k(&query, top_k),
            Some(filter) => {
                let admitted = self.filters.matching(filter, self.index.n_slots());
                self.index
                    .top_k_filtered(&query, top_k, |slot| bit_is_set(&admitted, slot))
            }
        };
        let mut outcome = SearchOutcome {
            hits: Vec::with_capacity(hits.len()),
            missing: 0,
        };
        for hit in hits {
            let id = self.index.id(hit.slot);
            match self.metadata.get(id)? {
                Some(metadata) => outcome.hits.push(SearchHit {
                    id: id.to_owned(),
                    score: hit.score,
                    metadata,
                }),
                None => {
                    tracing::warn!(id, version = %self.info.name, "indexed item has no metadata");
                    outcome.missing += 1;
                }
            }
        }
        Ok(outcome)
    }

    /// One item's stored JSON.
    pub fn get(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.metadata.get(id)
    }
}

/// The catalog requests are served from: empty until the first version is swapped in.
#[derive(Default)]
pub struct CurrentCatalog {
    /// Many readers, rare writers: one atomic load per request.
    current: ArcSwapOption<Catalog>,
}

impl CurrentCatalog {
    /// The catalog to serve one request from, or `None` before the first swap.
    pub fn load(&self) -> Option<Arc<Catalog>> {
        self.current.load_full()
    }

    /// Makes `catalog` current. The previous one closes when its last request finishes.
    pub fn swap(&self, catalog: Arc<Catalog>) {
        self.current.store(Some(catalog));
    }
}
