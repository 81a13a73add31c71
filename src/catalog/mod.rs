//! A catalog is one loaded, servable version: the model, the vector index and the read
//! handles of the metadata database, all from the same version. Requests take the current
//! catalog once ([`CurrentCatalog::load`]) and use it to the end, so a swap never mixes
//! versions within a request.
//!
//! Ranking (the local index here, or Pinecone through [`backend::VectorBackend`]) yields
//! `(id, score)` pairs; [`Catalog::join`], the one metadata join, adds each item's JSON and
//! counts an id the database lacks as a join miss, whichever backend ranked it.

pub mod backend;
pub mod cache;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwapOption;

use crate::db::leveldb::MetadataReaders;
use crate::search::filter::{Filter, FilterError, FilterIndex, bit_is_set};
use crate::search::index::VectorIndex;
use crate::search::tfidf::{SparseVector, TfidfModel};
use crate::state::{LocalState, Models, StateDir, StoreVersion, VersionInfo};

/// A version whose parts disagree (index, database, description): never served, and not
/// worth opening again.
#[derive(Debug, thiserror::Error)]
#[error("{0}: not trusted")]
pub struct Inconsistent(pub String);

/// One loaded version.
pub struct Catalog {
    /// What version this is.
    pub info: VersionInfo,
    /// The model its index was built with (the bundle's, or a rollover's).
    model: Arc<TfidfModel>,
    /// The version's vector index.
    index: VectorIndex,
    /// Read handles on clones of the version's metadata db.
    metadata: MetadataReaders,
    /// The version's filter index, in memory.
    filters: FilterIndex,
    /// Item JSON read so far (bounded; seeded from the previous version's on a swap).
    cache: cache::ItemCache,
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
    /// Ids the index returned that the metadata db lacks (skipped).
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
            return Err(Inconsistent(format!(
                "index of version {} has dimension {} but the model has {} terms",
                version.info.name,
                index.n_terms(),
                model.n_terms()
            ))
            .into());
        }
        if index.n_items() as u64 != version.info.n_items {
            return Err(Inconsistent(format!(
                "index of version {} holds {} items but the version records {}",
                version.info.name,
                index.n_items(),
                version.info.n_items
            ))
            .into());
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
        let expected = crate::db::leveldb::RecordedState {
            seq: version.info.seq,
            chain_digest: version.info.chain_digest.clone(),
        };
        if recorded.as_ref() != Some(&expected) {
            return Err(Inconsistent(format!(
                "version {} records {:?} in its database but {:?} in version.json",
                version.info.name, recorded, expected
            ))
            .into());
        }
        Ok(Catalog {
            info: version.info.clone(),
            model,
            index,
            metadata,
            filters,
            cache: cache::ItemCache::new(),
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

    /// Embeds `query_text`, ranks the local index (over the items `filter` admits, if any,
    /// before top-k is taken), and joins each hit with its metadata.
    pub fn search(
        &self,
        query_text: &str,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> anyhow::Result<SearchOutcome> {
        let ranked = self.rank(query_text, top_k, filter);
        self.join(ranked)
    }

    /// [`Catalog::search`] of a query already embedded with this catalog's model.
    pub fn search_embedded(
        &self,
        query: &SparseVector,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> anyhow::Result<SearchOutcome> {
        let ranked = self.rank_embedded(query, top_k, filter);
        self.join(ranked)
    }

    /// The local index's exact top-k for `query_text`, as (id, score), best first.
    pub fn rank(
        &self,
        query_text: &str,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Vec<(String, f32)> {
        self.rank_embedded(&self.model.embed(query_text), top_k, filter)
    }

    fn rank_embedded(
        &self,
        query: &SparseVector,
        top_k: usize,
        filter: Option<&Filter>,
    ) -> Vec<(String, f32)> {
        let hits = match filter {
            None => self.index.top_k(query, top_k),
            Some(filter) => {
                let admitted = self.filters.matching(filter, self.index.n_slots());
                self.index
                    .top_k_filtered(query, top_k, |slot| bit_is_set(&admitted, slot))
            }
        };
        hits.into_iter()
            .map(|hit| (self.index.id(hit.slot).to_owned(), hit.score))
            .collect()
    }

    /// Adds each ranked id's metadata, in order. An id this version's database lacks is
    /// skipped and counted (in the outcome's `missing` and in
    /// `deltacache_join_misses_total`): never substituted.
    pub fn join(&self, ranked: Vec<(String, f32)>) -> anyhow::Result<SearchOutcome> {
        let mut outcome = SearchOutcome {
            hits: Vec::with_capacity(ranked.len()),
            missing: 0,
        };
        for (id, score) in ranked {
            match self.get(&id)? {
                Some(metadata) => outcome.hits.push(SearchHit {
                    id,
                    score,
                    metadata,
                }),
                None => {
                    tracing::debug!(id, version = %self.info.name, "ranked item has no metadata");
                    outcome.missing += 1;
                }
            }
        }
        if outcome.missing > 0 {
            metrics::counter!("deltacache_join_misses_total").increment(outcome.missing as u64);
        }
        Ok(outcome)
    }

    /// One item's stored JSON.
    pub fn get(&self, id: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .cache
            .get_or_read(id, || self.metadata.get(id))?
            .map(|json| json.to_vec()))
    }

    /// Starts this catalog's cache with `older`'s entries but those of the ids in `touched`
    /// (the ids the deltas from `older`'s version to this one put or deleted).
    pub fn seed_cache_from(&self, older: &Catalog, touched: &std::collections::HashSet<String>) {
        let started = std::time::Instant::now();
        let copied = self.cache.seed_from(&older.cache, touched);
        metrics::gauge!("deltacache_item_cache_carried_entries").set(copied as f64);
        tracing::debug!(
            copied,
            touched = touched.len(),
            seconds = started.elapsed().as_secs_f64(),
            "carried the item cache over to the new version"
        );
    }
}

/// Opens the catalog of a committed version on a blocking thread, off the async workers;
/// `index` is the version's index when it is already in memory (as apply leaves it).
pub async fn open_in_background(
    state: &Arc<StateDir>,
    version: &StoreVersion,
    models: &Arc<Models>,
    index: Option<VectorIndex>,
    reader_shards: usize,
) -> anyhow::Result<Arc<Catalog>> {
    let state = state.clone();
    let version = version.clone();
    let models = models.clone();
    tokio::task::spawn_blocking(move || {
        let model = models.for_version(&version)?;
        Catalog::open_with_index(
            &version,
            model,
            index,
            &state.reader_dir(&version),
            reader_shards,
        )
        .map(Arc::new)
    })
    .await
    .context("join the catalog loading task")?
}

/// Opens the catalog of `local.version`; if it does not open or its recorded state
/// disagrees, falls back to older committed versions of the same bundle (making the first
/// that opens current), then to a fresh clone of the bundle. Blocking.
pub fn open_with_fallback(local: &LocalState, reader_shards: usize) -> anyhow::Result<Catalog> {
    let open = |version: &StoreVersion| {
        Catalog::open(
            version,
            local.models.for_version(version)?,
            &local.state.reader_dir(version),
            reader_shards,
        )
    };
    let error = match open(&local.version) {
        Ok(catalog) => return Ok(catalog),
        Err(error) => error,
    };
    tracing::warn!(version = %local.version.info.name, error = format!("{error:#}"), "current version is not trusted; falling back");
    for version in local.state.versions()?.iter().rev() {
        if version.info.name == local.version.info.name
            || version.info.dataset != local.bundle.manifest.dataset
        {
            continue;
        }
        if let Ok(catalog) = open(version) {
            local.state.set_current(&version.info.name)?;
            tracing::warn!(version = %version.info.name, "serving an older committed version");
            return Ok(catalog);
        }
    }
    local.state.reset()?;
    let fresh = local.state.ensure_from_bundle(&local.bundle)?;
    open(&fresh)
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

/// Exports the join and item-cache counters at 0 before the first request, so that `rate()`
/// and `increase()` see the first miss.
pub fn zero_metrics() {
    for name in [
        "deltacache_join_misses_total",
        "deltacache_item_cache_hits_total",
        "deltacache_item_cache_misses_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}
