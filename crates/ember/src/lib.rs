//! The `ember` binary's library: configuration, fetching models (`pull`), and the wiring that
//! turns the catalog, the engines, the store and the HTTP router into a running server. Rust
//! programs that want `run()` in-process call `open_ember` and then `Ember::run`.

pub mod config;
pub mod pull;
pub mod server;

pub use server::{ServeConfig, open_ember, serve};
