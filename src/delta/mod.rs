//! Delta batches: the format, the chain as verified metadata names it, publishing, the fleet
//! policy that steers which deltas instances take, and the earlier signed format (read only,
//! to adopt a store of it).

pub mod chain;
pub mod fleet;
pub mod format;
pub mod legacy;
pub mod publish;
pub mod snapshot;
pub mod tip_cache;
