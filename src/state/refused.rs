//! Versions the health gate refused, remembered by the digest of the last delta they
//! applied, so a refused chain is never applied again (a delta after it makes a new chain,
//! which is gated as a whole).

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::StateDir;
use crate::durable;

/// How many refusals are remembered (the oldest are forgotten first).
pub const MAX_REFUSALS: usize = 64;

/// One refused version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The seq the version reached.
    pub seq: u64,
    /// The sha256 of the last delta it applied.
    pub digest: String,
    /// A short label: `min-items`, `removed`, `canary`, `latency`.
    pub reason: String,
    /// What failed, in words.
    pub message: String,
    /// When (seconds since the epoch).
    pub at: u64,
}

impl StateDir {
    /// The refusals remembered, oldest first.
    pub fn refusals(&self) -> anyhow::Result<Vec<Refusal>> {
        let path = self.root.join("refused.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "parse {} (remove it to forget what the health gate refused)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// The refusal of a version whose last delta has `digest`, if there was one.
    pub fn refusal_of(&self, digest: &str) -> anyhow::Result<Option<Refusal>> {
        Ok(self.refusals()?.into_iter().find(|r| r.digest == digest))
    }

    /// Remembers a refusal (durably).
    pub fn record_refusal(&self, refusal: Refusal) -> anyhow::Result<()> {
        let mut refusals = self.refusals()?;
        refusals.retain(|r| r.digest != refusal.digest);
        refusals.push(refusal);
        let excess = refusals.len().saturating_sub(MAX_REFUSALS);
        refusals.drain(..excess);
        durable::write_atomically(
            &self.root.join("refused.json"),
            &serde_json::to_vec_pretty(&refusals)?,
        )
    }
}
