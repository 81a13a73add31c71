//! deltacache serves similarity search and metadata lookups from a LevelDB baked into an
//! immutable machine image, and keeps it fresh with signed delta batches.
//!
//! The search path: query text → TF-IDF embedding with the bundle's model (scikit-learn's
//! maths) → exact top-k from the vector index → each id's metadata from the local LevelDB.
//!
//! # Layout
//! Lowest layer first; a module uses only modules above it in this list (ARCHITECTURE.md,
//! "Layers"; `tests/it/tidy.rs` holds it).
//! - [`clock`], [`digest`], [`durable`], [`lock_file`], [`secret_file`], [`failpoint`],
//!   [`progress`], [`telemetry`]: small foundations.
//! - [`db`]: the LevelDB layer: key layout, opening and reading, clones, migrations.
//! - [`search`]: TF-IDF embedding, the local vector index, query-time filtering.
//! - [`bundle`]: what `build-base` writes and an image bakes (manifest, model, index, db).
//! - [`delta_store`]: where deltas are published (a local directory, S3).
//! - [`tuf`]: The Update Framework, through `tough`: keys, roots, the publisher's writes, the
//!   instance's verified reads.
//! - [`delta`]: keys, the signed delta and head format, chain verification, publishing.
//! - [`pinecone`]: the Pinecone client and keeping an index in step with bundles and deltas.
//! - [`state`]: the state dir, the one owner of everything under it: versions, the pointer,
//!   the pin, the trust watermark, staging and garbage collection.
//! - [`catalog`]: one loaded version, ranking through a vector backend, the metadata join,
//!   and the atomically swapped current catalog.
//! - [`sync`]: fetch and verify deltas, have the state dir apply them; the daemon's follower.
//! - [`http`]: router, handlers, errors.
//! - [`server`]: the daemon's boot and serve loop.
//! - [`config`]: the TOML config file; [`demo`]: the embedded default.
//! - [`cli`]: one file per subcommand, glue only.

pub mod clock;
pub mod digest;
pub mod durable;
pub mod failpoint;
pub mod lock_file;
pub mod progress;
pub mod secret_file;
pub mod telemetry;

pub mod db;
pub mod search;

pub mod bundle;
pub mod delta_store;

pub mod tuf;

pub mod delta;
pub mod pinecone;

pub mod state;

pub mod catalog;
pub mod sync;

pub mod http;
pub mod server;

pub mod cli;
pub mod config;
pub mod demo;
