//! A bounded in-memory cache of item JSON in front of a version's LevelDB reads
//! (`quick_cache`, weighed in bytes). Versions are immutable, so an entry is never stale for
//! the version whose catalog holds the cache; when a new version is swapped in, its cache
//! starts with the old one's entries minus the ids its deltas touched, so a swap does not
//! empty it. Absent ids are not cached.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;

/// The default budget, in bytes, of each catalog's cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// The budget new catalogs get (set once by `serve`; tests and tools keep the default).
static BUDGET: AtomicU64 = AtomicU64::new(DEFAULT_CACHE_BYTES);

/// Sets the budget of caches made from now on (0: no cache).
pub fn set_budget(bytes: u64) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

/// What an entry costs: its id, its JSON and the bookkeeping around them.
#[derive(Debug, Clone, Copy)]
struct Bytes;

impl Weighter<Box<str>, Arc<[u8]>> for Bytes {
    fn weight(&self, key: &Box<str>, value: &Arc<[u8]>) -> u64 {
        (key.len() + value.len() + 64) as u64
    }
}

/// One catalog's cache of item JSON by id.
pub struct ItemCache {
    /// `None` when the budget is 0.
    cache: Option<quick_cache::sync::Cache<Box<str>, Arc<[u8]>, Bytes>>,
}

impl ItemCache {
    /// A cache of the budget set by [`set_budget`].
    pub fn new() -> Self {
        let bytes = BUDGET.load(Ordering::Relaxed);
        ItemCache {
            cache: (bytes > 0).then(|| {
                // An estimate of the entry count sizes the tables; items are ~1 KiB.
                let items = (bytes / 1024).clamp(16, 1 << 24) as usize;
                quick_cache::sync::Cache::with_weighter(items, bytes, Bytes)
            }),
        }
    }

    /// `id`'s JSON: from the cache, or from `read` (then kept).
    pub fn get_or_read(
        &self,
        id: &str,
        read: impl FnOnce() -> anyhow::Result<Option<Vec<u8>>>,
    ) -> anyhow::Result<Option<Arc<[u8]>>> {
        let Some(cache) = &self.cache else {
            return Ok(read()?.map(Arc::from));
        };
        if let Some(hit) = cache.get(id) {
            metrics::counter!("deltacache_item_cache_hits_total").increment(1);
            return Ok(Some(hit));
        }
        metrics::counter!("deltacache_item_cache_misses_total").increment(1);
        let Some(value) = read()? else {
            return Ok(None);
        };
        let value: Arc<[u8]> = Arc::from(value);
        cache.insert(id.into(), value.clone());
        Ok(Some(value))
    }

    /// Copies `older`'s entries, except the ids in `touched` (what the deltas between the
    /// two versions put or deleted). Returns how many were copied.
    pub fn seed_from(&self, older: &ItemCache, touched: &HashSet<String>) -> usize {
        let (Some(cache), Some(older)) = (&self.cache, &older.cache) else {
            return 0;
        };
        let mut copied = 0;
        for (id, value) in older.iter() {
            if !touched.contains(&*id) {
                cache.insert(id, value);
                copied += 1;
            }
        }
        copied
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ItemCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_kept_absence_is_not_and_seeding_skips_touched_ids() {
        let old = ItemCache::new();
        let reads = std::cell::Cell::new(0);
        let read = |value: Option<&str>| {
            reads.set(reads.get() + 1);
            Ok(value.map(|v| v.as_bytes().to_vec()))
        };
        for _ in 0..2 {
            assert_eq!(
                &*old
                    .get_or_read("a", || read(Some("{\"id\":\"a\"}")))
                    .unwrap()
                    .unwrap(),
                b"{\"id\":\"a\"}"
            );
            assert!(old.get_or_read("gone", || read(None)).unwrap().is_none());
        }
        assert_eq!(reads.get(), 3, "a read once, the absent id twice");
        old.get_or_read("b", || read(Some("{\"id\":\"b\"}")))
            .unwrap();

        let new = ItemCache::new();
        let touched: HashSet<String> = ["b".to_owned()].into();
        assert_eq!(new.seed_from(&old, &touched), 1);
        let before = reads.get();
        new.get_or_read("a", || read(Some("changed"))).unwrap();
        assert_eq!(reads.get(), before, "a came over");
        let b = new
            .get_or_read("b", || read(Some("{\"id\":\"b2\"}")))
            .unwrap();
        assert_eq!(
            &*b.unwrap(),
            b"{\"id\":\"b2\"}",
            "b was touched: read again"
        );
    }
}
