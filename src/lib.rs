//! deltacache serves similarity search and metadata lookups from a LevelDB baked into an
//! immutable machine image, and keeps it fresh with signed delta batches.
//!
//! The search path: query text → TF-IDF embedding with the bundle's model (scikit-learn's
//! maths) → exact top-k from the vector index → each id's metadata from the local LevelDB.
//!
//! # Layout
//! - [`bundle`]: what `build-base` writes and an image bakes (manifest, model, index, db).
//! - [`store`]: the LevelDB layout, copy-on-write clones, durability, the state dir.
//! - [`search`]: TF-IDF embedding, the local vector index, and the vector backends (local,
//!   Pinecone).
//! - [`delta`]: keys, the signed delta and head format, chain verification, publishing.
//! - [`remote`]: delta stores (a local directory, S3).
//! - [`sync`]: fetch, verify, apply to a new version, swap; and the daemon's follower.
//! - [`catalog`]: one loaded version, and the atomically swapped current one.
//! - [`http`]: router, handlers, errors.
//! - [`server`]: the daemon's boot and serve loop.
//! - [`config`]: the TOML config file.
//! - [`cli`]: one file per subcommand, glue only.

pub mod bundle;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod delta;
pub mod failpoint;
pub mod http;
pub mod progress;
pub mod remote;
pub mod search;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
