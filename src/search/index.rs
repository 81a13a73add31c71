//! The local vector index: an exact inverted index over l2-normalised TF-IDF vectors.
//!
//! Cosine similarity of normalised vectors is their dot product, and a query has only a few
//! terms, so a query touches only the posting lists of its terms. Scores are accumulated per
//! document in ascending term order (the order scikit-learn's sparse product uses), so equal
//! documents get bit-equal scores and ties are broken by slot order, which is corpus order.
//!
//! Deltas patch the index in place: an upsert retires the item's old slot and appends a new
//! one, a delete retires the slot. Retired slots are skipped by queries and dropped by
//! [`VectorIndex::compact`], which keeps the relative order of the live slots.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, bail};

use super::tfidf::SparseVector;

/// One entry of a posting list: a document slot and its weight for the term.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Posting {
    slot: u32,
    weight: f32,
}

/// A scored hit: the document's slot and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Slot of the document (see [`VectorIndex::id`]).
    pub slot: u32,
    /// Cosine similarity, > 0.
    pub score: f32,
}

/// An exact, patchable inverted index.
#[derive(Debug, Clone, Default)]
pub struct VectorIndex {
    /// Posting lists by term index; slots ascend within each list.
    postings: Vec<Vec<Posting>>,
    /// Item id of each slot.
    slot_ids: Vec<Box<str>>,
    /// Whether each slot is live (not retired by an upsert or delete).
    slot_live: Vec<bool>,
    /// Live slot of each item id.
    id_slot: HashMap<Box<str>, u32>,
    /// Number of retired slots, to decide when to compact.
    n_retired: usize,
}

thread_local! {
    /// Per-thread score accumulator, so queries allocate nothing proportional to the corpus.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    touched: Vec<u32>,
}

const INDEX_MAGIC: &[u8; 8] = b"DCINDEX\0";
const INDEX_FORMAT_VERSION: u32 = 1;

impl VectorIndex {
    /// An empty index for a model with `n_terms` terms.
    pub fn new(n_terms: usize) -> Self {
        VectorIndex {
            postings: vec![Vec::new(); n_terms],
            ..Default::default()
        }
    }

    /// Number of live items.
    pub fn n_items(&self) -> usize {
        self.id_slot.len()
    }

    /// The model dimension this index was built for.
    pub fn n_terms(&self) -> usize {
        self.postings.len()
    }

    /// The id stored in a slot.
    pub fn id(&self, slot: u32) -> &str {
        &self.slot_ids[slot as usize]
    }

    /// The live slot of `id`, if the index holds it.
    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.id_slot.get(id).copied()
    }

    /// The number of slots (live and retired): the bound of every slot number.
    pub fn n_slots(&self) -> usize {
        self.slot_ids.len()
    }

    /// Whether an item id is live in the index.
    pub fn contains(&self, id: &str) -> bool {
        self.id_slot.contains_key(id)
    }

    /// Inserts or replaces an item's vector. A replaced item moves to the end of corpus order.
    pub fn upsert(&mut self, id: &str, vector: &SparseVector) -> anyhow::Result<()> {
        if let Some(bad) = vector
            .iter()
            .find(|(t, _)| *t as usize >= self.postings.len())
        {
            bail!(
                "vector of item {id:?} has term index {} but the model has {} terms",
                bad.0,
                self.postings.len()
            );
        }
        self.delete(id);
        let slot = u32::try_from(self.slot_ids.len()).context("index holds 2^32 slots")?;
        for &(term, weight) in vector {
            self.postings[term as usize].push(Posting { slot, weight });
        }
        self.slot_ids.push(id.into());
        self.slot_live.push(true);
        self.id_slot.insert(id.into(), slot);
        Ok(())
    }

    /// Removes an item; returns whether it was present.
    pub fn delete(&mut self, id: &str) -> bool {
        match self.id_slot.remove(id) {
            Some(slot) => {
                self.slot_live[slot as usize] = false;
                self.n_retired += 1;
                true
            }
            None => false,
        }
    }

    /// Drops retired slots from every posting list when they are at least a quarter of all
    /// slots. Live slots keep their relative (corpus) order.
    pub fn compact_if_worthwhile(&mut self) {
        if self.n_retired * 4 >= self.slot_ids.len().max(1) && self.n_retired > 0 {
            self.compact();
        }
    }

    /// Drops retired slots, renumbering live ones in order.
    pub fn compact(&mut self) {
        let mut new_slot = vec![u32::MAX; self.slot_ids.len()];
        let mut next = 0u32;
        for (slot, live) in self.slot_live.iter().enumerate() {
            if *live {
                new_slot[slot] = next;
                next += 1;
            }
        }
        for list in &mut self.postings {
            list.retain(|p| new_slot[p.slot as usize] != u32::MAX);
            for p in list.iter_mut() {
                p.slot = new_slot[p.slot as usize];
            }
        }
        let ids = std::mem::take(&mut self.slot_ids);
        self.slot_ids = ids
            .into_iter()
            .zip(&self.slot_live)
            .filter(|(_, live)| **live)
            .map(|(id, _)| id)
            .collect();
        self.slot_live = vec![true; self.slot_ids.len()];
        for (slot, id) in self.slot_ids.iter().enumerate() {
            self.id_slot.insert(id.clone(), slot as u32);
        }
        self.n_retired = 0;
    }

    /// How many postings a search for `query` reads: what its ranking costs.
    pub fn postings_of(&self, query: &SparseVector) -> usize {
        query
            .iter()
            .map(|&(term, _)| self.postings.get(term as usize).map_or(0, Vec::len))
            .sum()
    }

    /// The `k` live documents most similar to `query`, best first; only scores > 0; ties by
    /// corpus order. `accept` filters slots before ranking.
    pub fn top_k(&self, query: &SparseVector, k: usize) -> Vec<Hit> {
        self.top_k_filtered(query, k, |_| true)
    }

    /// [`VectorIndex::top_k`] over the slots that `accept` admits.
    pub fn top_k_filtered(
        &self,
        query: &SparseVector,
        k: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<Hit> {
        if k == 0 || query.is_empty() {
            return Vec::new();
        }
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            if scratch.scores.len() < self.slot_ids.len() {
                scratch.scores.resize(self.slot_ids.len(), 0.0);
            }
            let scores = &mut scratch.scores;
            let touched = &mut scratch.touched;
            touched.clear();
            for &(term, q_weight) in query {
                let Some(list) = self.postings.get(term as usize) else {
                    continue;
                };
                for p in list {
                    let score = &mut scores[p.slot as usize];
                    if *score == 0.0 {
                        touched.push(p.slot);
                    }
                    *score += q_weight * p.weight;
                }
            }
            // Bounded selection: keep the best k by (score desc, slot asc).
            let mut best: Vec<Hit> = Vec::with_capacity(k + 1);
            for &slot in touched.iter() {
                let score = std::mem::replace(&mut scores[slot as usize], 0.0);
                if score <= 0.0 || !self.slot_live[slot as usize] {
                    continue;
                }
                let hit = Hit { slot, score };
                // The filter is asked only about hits that would enter the top k.
                if best.len() == k && !ranks_before(&hit, &best[k - 1]) {
                    continue;
                }
                if !accept(slot) {
                    continue;
                }
                if best.len() == k {
                    best.pop();
                }
                let at = best.partition_point(|h| ranks_before(h, &hit));
                best.insert(at, hit);
            }
            best
        })
    }

    /// Scores every live document by brute force (for tests and checks).
    pub fn brute_force(&self, query: &SparseVector, k: usize) -> Vec<Hit> {
        let mut doc_vectors: Vec<Vec<(u32, f32)>> = vec![Vec::new(); self.slot_ids.len()];
        for (term, list) in self.postings.iter().enumerate() {
            for p in list {
                doc_vectors[p.slot as usize].push((term as u32, p.weight));
            }
        }
        let mut hits: Vec<Hit> = Vec::new();
        for (slot, doc) in doc_vectors.iter().enumerate() {
            if !self.slot_live[slot] {
                continue;
            }
            let mut score = 0.0f32;
            for &(term, q) in query {
                if let Ok(at) = doc.binary_search_by_key(&term, |d| d.0) {
                    score += q * doc[at].1;
                }
            }
            if score > 0.0 {
                hits.push(Hit {
                    slot: slot as u32,
                    score,
                });
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.slot.cmp(&b.slot)));
        hits.truncate(k);
        hits
    }

    /// Writes the index (live slots only, renumbered in order) to `path`, streaming: retired
    /// slots are skipped on the way out rather than compacted in a copy.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("create index {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut new_slot = Vec::with_capacity(self.slot_ids.len());
        let mut n_live = 0u32;
        for live in &self.slot_live {
            new_slot.push(if *live { n_live } else { u32::MAX });
            n_live += u32::from(*live);
        }
        out.write_all(INDEX_MAGIC)?;
        out.write_all(&INDEX_FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&(self.postings.len() as u64).to_le_bytes())?;
        out.write_all(&u64::from(n_live).to_le_bytes())?;
        for (id, live) in self.slot_ids.iter().zip(&self.slot_live) {
            if *live {
                out.write_all(&(id.len() as u32).to_le_bytes())?;
                out.write_all(id.as_bytes())?;
            }
        }
        let mut buf: Vec<u8> = Vec::new();
        for list in &self.postings {
            buf.clear();
            let mut n = 0u32;
            for p in list {
                let slot = new_slot[p.slot as usize];
                if slot != u32::MAX {
                    buf.extend_from_slice(&slot.to_le_bytes());
                    buf.extend_from_slice(&p.weight.to_le_bytes());
                    n += 1;
                }
            }
            out.write_all(&n.to_le_bytes())?;
            out.write_all(&buf)?;
        }
        out.flush()
            .with_context(|| format!("write index {}", path.display()))?;
        Ok(())
    }

    /// Reads an index written by [`VectorIndex::save`]. Every length is checked against the
    /// file's size before anything is allocated from it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("open index {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        Self::read_from(&mut input, file_len)
            .with_context(|| format!("read index {}", path.display()))
    }

    fn read_from(input: &mut impl Read, file_len: u64) -> anyhow::Result<Self> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != INDEX_MAGIC {
            bail!("not a deltacache index (bad magic number)");
        }
        let version = read_u32(input)?;
        if version != INDEX_FORMAT_VERSION {
            bail!(
                "index format version {version} is not supported (this binary reads {INDEX_FORMAT_VERSION})"
            );
        }
        let n_terms = read_u64(input)?;
        let n_slots = read_u64(input)?;
        // Every term costs at least 4 bytes and every slot at least 4: a length beyond the
        // file size is corruption, refused before allocating.
        if n_terms.saturating_mul(4) > file_len || n_slots.saturating_mul(4) > file_len {
            bail!(
                "index header claims {n_terms} terms and {n_slots} slots, more than the file can hold"
            );
        }
        let mut index = VectorIndex::new(n_terms as usize);
        index.slot_ids.reserve(n_slots as usize);
        let mut id_buf = Vec::new();
        for slot in 0..n_slots as u32 {
            let len = read_u32(input)? as u64;
            if len > file_len {
                bail!("slot {slot} claims an id of {len} bytes, more than the file holds");
            }
            id_buf.resize(len as usize, 0);
            input.read_exact(&mut id_buf)?;
            let id: Box<str> = std::str::from_utf8(&id_buf)
                .with_context(|| format!("id of slot {slot} is not UTF-8"))?
                .into();
            if index.id_slot.insert(id.clone(), slot).is_some() {
                bail!("item id {id:?} appears twice in the index");
            }
            index.slot_ids.push(id);
        }
        index.slot_live = vec![true; n_slots as usize];
        let mut buf: Vec<u8> = Vec::new();
        for term in 0..n_terms as usize {
            let len = read_u32(input)? as u64;
            if len > n_slots {
                bail!("posting list of term {term} holds {len} entries for {n_slots} slots");
            }
            let list = &mut index.postings[term];
            list.reserve(len as usize);
            buf.resize(len as usize * 8, 0);
            input.read_exact(&mut buf).context("index is truncated")?;
            let mut last: Option<u32> = None;
            for entry in buf.chunks_exact(8) {
                let slot = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let weight = f32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                if slot as u64 >= n_slots || last.is_some_and(|l| l >= slot) || !weight.is_finite()
                {
                    bail!("posting list of term {term} is corrupt (slot {slot})");
                }
                last = Some(slot);
                list.push(Posting { slot, weight });
            }
        }
        let mut trailing = [0u8; 1];
        if input.read(&mut trailing)? != 0 {
            bail!("index has trailing bytes");
        }
        Ok(index)
    }
}

fn ranks_before(a: &Hit, b: &Hit) -> bool {
    a.score > b.score || (a.score == b.score && a.slot < b.slot)
}

fn read_u32(input: &mut impl Read) -> anyhow::Result<u32> {
    let mut buf = [0u8; 4];
    input.read_exact(&mut buf).context("index is truncated")?;
    Ok(u32::from_le_bytes(buf))
}

fn read_u64(input: &mut impl Read) -> anyhow::Result<u64> {
    let mut buf = [0u8; 8];
    input.read_exact(&mut buf).context("index is truncated")?;
    Ok(u64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vector_strategy(n_terms: u32) -> impl Strategy<Value = SparseVector> {
        proptest::collection::btree_map(0..n_terms, 1u8..8, 0..5).prop_map(|m| {
            let norm = m.values().map(|v| (*v as f32).powi(2)).sum::<f32>().sqrt();
            m.into_iter().map(|(t, w)| (t, w as f32 / norm)).collect()
        })
    }

    proptest! {
        #[test]
        fn top_k_equals_brute_force_after_patches(
            docs in proptest::collection::vec((0u8..30, vector_strategy(12)), 1..60),
            deletes in proptest::collection::vec(0u8..30, 0..10),
            query in vector_strategy(12),
            k in 1usize..12,
        ) {
            let mut index = VectorIndex::new(12);
            for (id, v) in &docs {
                index.upsert(&format!("item-{id}"), v).unwrap();
            }
            for id in &deletes {
                index.delete(&format!("item-{id}"));
            }
            let fast: Vec<(String, f32)> = index.top_k(&query, k).iter().map(|h| (index.id(h.slot).to_string(), h.score)).collect();
            let slow: Vec<(String, f32)> = index.brute_force(&query, k).iter().map(|h| (index.id(h.slot).to_string(), h.score)).collect();
            prop_assert_eq!(&fast, &slow);
            index.compact();
            let compacted: Vec<(String, f32)> = index.top_k(&query, k).iter().map(|h| (index.id(h.slot).to_string(), h.score)).collect();
            prop_assert_eq!(&compacted, &slow);
        }
    }

    #[test]
    fn save_load_round_trip_and_truncation_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = VectorIndex::new(3);
        index.upsert("a", &vec![(0, 0.6), (2, 0.8)]).unwrap();
        index.upsert("b", &vec![(1, 1.0)]).unwrap();
        index.upsert("c", &vec![(2, 1.0)]).unwrap();
        index.delete("b");
        let path = dir.path().join("index.bin");
        index.save(&path).unwrap();
        let loaded = VectorIndex::load(&path).unwrap();
        assert_eq!(loaded.n_items(), 2);
        let hits = loaded.top_k(&vec![(2, 1.0)], 5);
        let ids: Vec<&str> = hits.iter().map(|h| loaded.id(h.slot)).collect();
        assert_eq!(ids, ["c", "a"]);
        let bytes = std::fs::read(&path).unwrap();
        for len in 0..bytes.len() {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert!(
                VectorIndex::load(&path).is_err(),
                "truncated to {len} bytes was accepted"
            );
        }
    }

    #[test]
    fn upsert_moves_item_to_end_of_corpus_order() {
        let mut index = VectorIndex::new(1);
        index.upsert("a", &vec![(0, 1.0)]).unwrap();
        index.upsert("b", &vec![(0, 1.0)]).unwrap();
        index.upsert("a", &vec![(0, 1.0)]).unwrap();
        let ids: Vec<&str> = index
            .top_k(&vec![(0, 1.0)], 5)
            .iter()
            .map(|h| index.id(h.slot))
            .collect();
        assert_eq!(ids, ["b", "a"]);
    }
}
