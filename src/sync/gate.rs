//! The health gate: a new version is checked before readers see it, on its own catalog
//! (opened where it is made, before the commit). It must hold at least `min_items`, remove
//! at most `max_removed_percent` of the served version's items, answer every canary query
//! as stated, and answer searches within the latency budget (the median of a few rounds of
//! the canaries, or of probe queries made of the model's own terms when there are none).

use std::time::Instant;

use crate::catalog::Catalog;
use crate::delta::fleet::{Canary, GatePolicy, removed_percent};

/// How many times each query is timed.
const ROUNDS: usize = 5;
/// Probe queries when there are no canaries.
const PROBES: usize = 8;

/// What a version that passed showed.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReport {
    /// Its items.
    pub n_items: u64,
    /// The share of the served version's items it removes (0 when it grows).
    pub removed_percent: f64,
    /// Canary queries checked.
    pub canaries: usize,
    /// Median search time, in milliseconds.
    pub median_ms: f64,
}

/// Every label of a refusal (`deltacache_gate_refusals_total{reason}`).
pub const REFUSAL_REASONS: &[&str] = &["min-items", "removed", "canary", "latency", "search"];

/// Why a version was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("health gate refused seq {seq}: {message}")]
pub struct GateRefused {
    /// The seq the version reached.
    pub seq: u64,
    /// A short label for metrics: `min-items`, `removed`, `canary`, `latency`, `search`.
    pub reason: &'static str,
    /// What failed, in words.
    pub message: String,
}

/// Checks `catalog` (the new version) against `policy` and the canaries, `previous_items`
/// being what the served version holds. Blocking (it searches).
pub fn check(
    catalog: &Catalog,
    previous_items: u64,
    policy: &GatePolicy,
    local_canaries: &[Canary],
) -> Result<GateReport, GateRefused> {
    let seq = catalog.seq();
    let refuse = |reason: &'static str, message: String| GateRefused {
        seq,
        reason,
        message,
    };
    let n_items = catalog.index().n_items() as u64;
    policy
        .check_counts(previous_items, n_items)
        .map_err(|(reason, message)| refuse(reason, message))?;
    let removed_percent = removed_percent(previous_items, n_items);
    let canaries: Vec<&Canary> = local_canaries
        .iter()
        .chain(policy.canaries.iter())
        .collect();
    for canary in &canaries {
        check_canary(catalog, canary).map_err(|message| refuse("canary", message))?;
    }
    let median_ms = median_search_ms(catalog, &canaries)
        .map_err(|e| refuse("search", format!("a search failed: {e:#}")))?;
    if median_ms > policy.latency_budget_ms {
        return Err(refuse(
            "latency",
            format!(
                "its median search took {median_ms:.1} ms, over the budget of {} ms",
                policy.latency_budget_ms
            ),
        ));
    }
    Ok(GateReport {
        n_items,
        removed_percent,
        canaries: canaries.len(),
        median_ms,
    })
}

fn check_canary(catalog: &Catalog, canary: &Canary) -> Result<(), String> {
    let top_k = canary.top_k.max(canary.min_results).max(1);
    let outcome = catalog
        .search(&canary.query, top_k, None)
        .map_err(|e| format!("canary {:?}: the search failed: {e:#}", canary.query))?;
    let ids: Vec<&str> = outcome.hits.iter().map(|h| h.id.as_str()).collect();
    if ids.len() < canary.min_results {
        return Err(format!(
            "canary {:?} returned {} results, fewer than its min_results {}",
            canary.query,
            ids.len(),
            canary.min_results
        ));
    }
    if let Some(missing) = canary
        .must_include
        .iter()
        .find(|id| !ids.contains(&id.as_str()))
    {
        return Err(format!(
            "canary {:?} did not return {missing:?} in its top {top_k}",
            canary.query
        ));
    }
    if let Some(present) = canary
        .must_exclude
        .iter()
        .find(|id| ids.contains(&id.as_str()))
    {
        return Err(format!(
            "canary {:?} returned {present:?}, which it must not",
            canary.query
        ));
    }
    Ok(())
}

/// The median time of [`ROUNDS`] rounds of the canaries (or of probe queries), in ms.
fn median_search_ms(catalog: &Catalog, canaries: &[&Canary]) -> anyhow::Result<f64> {
    let queries: Vec<(String, usize)> = if canaries.is_empty() {
        probe_queries(catalog)
    } else {
        canaries
            .iter()
            .map(|c| (c.query.clone(), c.top_k.max(1)))
            .collect()
    };
    let mut samples = Vec::with_capacity(queries.len() * ROUNDS);
    for _ in 0..ROUNDS {
        for (query, top_k) in &queries {
            let started = Instant::now();
            catalog.search(query, *top_k, None)?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples.get(samples.len() / 2).copied().unwrap_or(0.0))
}

/// Queries of two of the model's terms each, spread over its vocabulary.
fn probe_queries(catalog: &Catalog) -> Vec<(String, usize)> {
    let terms = catalog.model().terms();
    if terms.is_empty() {
        return Vec::new();
    }
    let step = (terms.len() / (PROBES * 2)).max(1);
    (0..PROBES)
        .map(|i| {
            let a = &terms[(i * 2 * step) % terms.len()];
            let b = &terms[((i * 2 + 1) * step) % terms.len()];
            (format!("{a} {b}"), 10)
        })
        .collect()
}
