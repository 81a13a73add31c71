//! The store: the LevelDB layout, copy-on-write clones, durability, and the state dir's
//! versions.

pub mod clone;
pub mod durable;
pub mod leveldb;
pub mod state;
