//! `proxy_wasm::hostcalls`, and with `--features hostcall-count` (a bench build, never
//! shipped) a count of every host call the module makes: each request's end adds the calls
//! since the previous report to `apiguard.debug.hostcalls` and one to
//! `apiguard.debug.requests` (those two increments are not counted), so `make bench`
//! reports calls per request as Envoy really served them.

pub use proxy_wasm::hostcalls::*;

#[cfg(not(feature = "hostcall-count"))]
#[inline(always)]
pub fn count() {}

// Named, so they shadow the SDK's glob above.
#[cfg(feature = "hostcall-count")]
pub use counted::{
    call_foreign_function, count, define_metric, dispatch_grpc_call, get_buffer, get_current_time,
    get_property, get_shared_data, increment_metric, log, report_request, resume_http_request,
    send_http_response, set_map_value, set_property, set_shared_data,
};

#[cfg(feature = "hostcall-count")]
mod counted {
    use proxy_wasm::hostcalls as hc;
    use proxy_wasm::types::{BufferType, Bytes, MapType, MetricType, Status};
    use std::cell::Cell;
    use std::time::SystemTime;

    thread_local! {
        static CALLS: Cell<i64> = const { Cell::new(0) };
        static IDS: Cell<Option<(u32, u32)>> = const { Cell::new(None) };
    }

    pub fn count() {
        CALLS.with(|c| c.set(c.get() + 1));
    }

    pub fn report_request() {
        let ids = IDS.with(|ids| {
            if ids.get().is_none() {
                let calls = hc::define_metric(MetricType::Counter, "apiguard.debug.hostcalls");
                let reqs = hc::define_metric(MetricType::Counter, "apiguard.debug.requests");
                if let (Ok(c), Ok(r)) = (calls, reqs) {
                    ids.set(Some((c, r)));
                }
            }
            ids.get()
        });
        if let Some((calls, reqs)) = ids {
            let n = CALLS.with(|c| c.replace(0));
            let _ = hc::increment_metric(calls, n);
            let _ = hc::increment_metric(reqs, 1);
        }
    }

    pub fn log(level: proxy_wasm::types::LogLevel, message: &str) -> Result<(), Status> {
        count();
        hc::log(level, message)
    }
    pub fn get_current_time() -> Result<SystemTime, Status> {
        count();
        hc::get_current_time()
    }
    pub fn get_property(path: Vec<&str>) -> Result<Option<Bytes>, Status> {
        count();
        hc::get_property(path)
    }
    pub fn set_property(path: Vec<&str>, value: Option<&[u8]>) -> Result<(), Status> {
        count();
        hc::set_property(path, value)
    }
    pub fn get_shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
        count();
        hc::get_shared_data(key)
    }
    pub fn set_shared_data(
        key: &str,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Result<(), Status> {
        count();
        hc::set_shared_data(key, value, cas)
    }
    pub fn call_foreign_function(
        name: &str,
        arguments: Option<&[u8]>,
    ) -> Result<Option<Bytes>, Status> {
        count();
        hc::call_foreign_function(name, arguments)
    }
    pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, Status> {
        count();
        hc::define_metric(metric_type, name)
    }
    pub fn increment_metric(metric_id: u32, offset: i64) -> Result<(), Status> {
        count();
        hc::increment_metric(metric_id, offset)
    }
    pub fn get_buffer(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
    ) -> Result<Option<Bytes>, Status> {
        count();
        hc::get_buffer(buffer_type, start, max_size)
    }
    pub fn set_map_value(map: MapType, key: &str, value: Option<&str>) -> Result<(), Status> {
        count();
        hc::set_map_value(map, key, value)
    }
    pub fn dispatch_grpc_call(
        upstream: &str,
        service: &str,
        method: &str,
        initial_metadata: Vec<(&str, &[u8])>,
        message: Option<&[u8]>,
        timeout: std::time::Duration,
    ) -> Result<u32, Status> {
        count();
        hc::dispatch_grpc_call(
            upstream,
            service,
            method,
            initial_metadata,
            message,
            timeout,
        )
    }
    pub fn resume_http_request() -> Result<(), Status> {
        count();
        hc::resume_http_request()
    }
    pub fn send_http_response(
        status_code: u32,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
    ) -> Result<(), Status> {
        count();
        hc::send_http_response(status_code, headers, body)
    }
}
