//! apiguard-rls: Envoy's rate limit service (`envoy.service.ratelimit.v3.RateLimitService`).
//!
//! ```text
//! apiguard-rls --config limits.yaml [--listen 127.0.0.1:8081] [--redis redis://127.0.0.1:6379]
//! ```
//! The config is envoyproxy/ratelimit's format (`config.rs`), so the same file serves that
//! service. Without `--redis` the counters live in this process (one RLS, no sharing).
//! Once the server accepts connections it prints `listening <addr>` on stdout
//! (`--listen 127.0.0.1:0` picks a free port).

mod config;
mod counters;
mod grpc;

#[path = "../../src/rls_proto.rs"]
#[allow(dead_code)]
mod rls_proto;

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

struct Args {
    config: String,
    listen: String,
    redis: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut config = None;
    let mut listen = "127.0.0.1:8081".to_string();
    let mut redis = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => config = Some(value()?),
            "--listen" => listen = value()?,
            "--redis" => redis = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: apiguard-rls --config FILE [--listen ADDR] [--redis URL]"
                ))
            }
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    Ok(Args {
        config,
        listen,
        redis,
    })
}

async fn run(args: Args) -> Result<(), String> {
    let config = config::load(&args.config)?;
    let store = match &args.redis {
        Some(url) => counters::Store::redis(url).await?,
        None => counters::Store::memory(),
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {addr}");
    let service = grpc::Server::new(Arc::new(grpc::Rls { config, store }));
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match parse_args() {
        Ok(args) => run(args).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apiguard-rls: {e}");
            ExitCode::FAILURE
        }
    }
}
