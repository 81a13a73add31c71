//! What a process that serves or syncs starts from: the bundle, its model, the locked state
//! dir and the version to continue from.

use std::path::Path;
use std::sync::Arc;

use super::{Models, StateDir, StoreVersion};
use crate::bundle::Bundle;

/// The bundle, its model, the state dir and the newest usable committed version.
pub struct LocalState {
    /// The bundle.
    pub bundle: Bundle,
    /// Its model, and those of versions a model rollover brought.
    pub models: Arc<Models>,
    /// The state dir (locked).
    pub state: Arc<StateDir>,
    /// The version to start from.
    pub version: StoreVersion,
}

impl LocalState {
    /// Opens the bundle and the state dir (taking its lock) and picks the version to start
    /// from: the current one if it descends from this bundle and is at least as new, else a
    /// fresh clone of the bundle. Blocking.
    pub fn open(bundle_dir: &Path, state_dir: &Path) -> anyhow::Result<Self> {
        let bundle = Bundle::open(bundle_dir)?;
        let state = Arc::new(StateDir::open(state_dir)?);
        Self::open_from(bundle, state)
    }

    /// [`LocalState::open`] of a bundle whose manifest was read and a state dir already
    /// locked (`serve` does both before it listens, so a missing bundle or a state dir in use
    /// fails before anything says it listens). Blocking.
    pub fn open_from(bundle: Bundle, state: Arc<StateDir>) -> anyhow::Result<Self> {
        let models = Models::new(Arc::new(bundle.load_model()?));
        let version = state.ensure_from_bundle(&bundle)?;
        Ok(LocalState {
            bundle,
            models,
            state,
            version,
        })
    }
}
