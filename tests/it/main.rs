//! Integration tests: one test binary with shared helpers (see `support`).

mod build_base;
mod http_api;
mod parity;
mod serve;
mod support;
