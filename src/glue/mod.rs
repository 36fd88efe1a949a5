//! The only module that touches `proxy_wasm`: it adapts Envoy's callbacks to the pure core.
//!
//! One `Root` per worker VM (and one on the main thread) holds the compiled policy, the
//! worker's `Engine` and the remote-JWKS state; HTTP contexts borrow them per request.
//! Split by Envoy context: `root` (configuration, tick, JWKS fetches), `http` (one
//! request's phases), `global` (its rate limit service calls), `host` (the core's host
//! traits over proxy-wasm) and `hostcalls` (the SDK's calls, counted in bench builds).

mod global;
mod host;
mod hostcalls;
mod http;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // A panic aborts the VM; say where, at the highest level, before it happens.
        let _ = hostcalls::log(LogLevel::Critical, &format!("apiguard panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}
