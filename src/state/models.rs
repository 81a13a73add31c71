//! The models versions are embedded with. Every version descends from the baked bundle and
//! uses its model, until a model rollover (a catch-up snapshot fitted with a new model,
//! `compact --refit --publish`) installs a version whose own `model.json` holds the new one;
//! versions made from it share that file. Versions name their model by fingerprint in
//! `version.json`; a `model.json` that does not match it is refused.

use std::sync::Arc;

use anyhow::{Context, bail};

use super::StoreVersion;
use crate::bundle::MODEL_FILE;
use crate::search::tfidf::TfidfModel;

/// The bundle's model and the models of rolled-over versions, loaded once each.
#[derive(Debug)]
pub struct Models {
    /// The baked bundle's model.
    bundle: Arc<TfidfModel>,
    /// Models loaded from versions (a rollover brings one; a second replaces the first
    /// version by version, so a few at most).
    loaded: parking_lot::Mutex<Vec<Arc<TfidfModel>>>,
}

impl Models {
    /// Starts from the bundle's model.
    pub fn new(bundle: Arc<TfidfModel>) -> Arc<Self> {
        Arc::new(Models {
            bundle,
            loaded: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The baked bundle's model.
    pub fn bundle(&self) -> &Arc<TfidfModel> {
        &self.bundle
    }

    /// The model `version` is embedded with: the bundle's, or the one in its own
    /// `model.json`. Blocking (reads the file the first time).
    pub fn for_version(&self, version: &StoreVersion) -> anyhow::Result<Arc<TfidfModel>> {
        let fingerprint = &version.info.model_fingerprint;
        if fingerprint == self.bundle.fingerprint() {
            return Ok(self.bundle.clone());
        }
        if let Some(model) = self
            .loaded
            .lock()
            .iter()
            .find(|m| m.fingerprint() == fingerprint)
        {
            return Ok(model.clone());
        }
        let path = version.dir.join(MODEL_FILE);
        let model = TfidfModel::load(&path).with_context(|| {
            format!(
                "version {} is built for model {}, not the bundle's: read its own model",
                version.info.name,
                short(fingerprint)
            )
        })?;
        if model.fingerprint() != fingerprint {
            bail!(
                "{} has model {}, but version {} says {}: the version is damaged",
                path.display(),
                short(model.fingerprint()),
                version.info.name,
                short(fingerprint)
            );
        }
        let model = Arc::new(model);
        let mut loaded = self.loaded.lock();
        loaded.push(model.clone());
        if loaded.len() > 4 {
            loaded.remove(0);
        }
        Ok(model)
    }
}

/// The first 16 characters of a fingerprint, for messages.
pub fn short(fingerprint: &str) -> &str {
    &fingerprint[..16.min(fingerprint.len())]
}
