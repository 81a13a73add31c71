//! Delta batches: the format, the chain as verified metadata names it, publishing, and the
//! earlier signed format (read only, to adopt a store of it).

pub mod chain;
pub mod format;
pub mod legacy;
pub mod publish;
