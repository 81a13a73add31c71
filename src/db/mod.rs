//! The LevelDB layer ("the db"): the key layout of the metadata database, how it is opened
//! and read, its copy-on-write clones, its migrations and the filter index's keys. It knows
//! nothing of versions, deltas or serving.

pub mod clone;
pub mod filter;
pub mod leveldb;
pub mod migrate;
