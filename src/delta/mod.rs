//! Signed delta batches: keys, the object format, chain verification, and publishing.

pub mod chain;
pub mod format;
pub mod keys;
pub mod publish;
