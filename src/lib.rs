//! apiguard: an API-security filter for Envoy and Istio, built as a proxy-wasm module.
//!
//! Everything except `glue` is pure Rust that takes its host (clock, shared store,
//! signature verification) through the traits in `host`, so it is tested with `cargo test`.

pub mod authn;
pub mod authz;
pub mod body_phase;
pub mod cors;
pub mod credentials;
pub mod engine;
pub mod grpc;
pub mod grpc_details;
pub mod headermap;
pub mod host;
pub mod hostcrypto;
pub mod hygiene;
pub mod jwks_sync;
pub mod jwt;
/// OpenAPI import for the CLI: native only, never in the Wasm module.
#[cfg(not(target_arch = "wasm32"))]
pub mod openapi;
pub mod outcome;
pub mod percent;
pub mod policy;
pub mod problem;
pub mod routes;

#[cfg(target_arch = "wasm32")]
mod glue;
pub mod ratelimit;
pub mod rls_proto;
pub mod validate;
