//! Integration tests: one test binary with shared helpers (see `support`).

mod build_base;
mod delta;
mod fleet;
mod forge;
mod fuzz_http;
mod generate;
mod http_api;
mod interop;
mod limits;
mod logs;
mod lossy_proxy;
mod migrations;
mod openapi;
mod parity;
mod pinecone;
mod publish;
mod s3;
mod serve;
mod snapshot;
mod store;
mod support;
mod sync;
mod tidy;
mod trust;
mod walkthrough;
