//! The store: the LevelDB layout, its migrations and filter index, copy-on-write clones,
//! durability, and the state dir's versions.

pub mod clone;
pub mod durable;
pub mod filter;
pub mod leveldb;
pub mod migrate;
pub mod state;
