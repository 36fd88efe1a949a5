//! The gRPC surface: `ShouldRateLimit` (a hand-written tonic service over the prost
//! messages in src/rls_proto.rs, what tonic's code generator would emit for one method).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status};

use crate::config::{Config, Matched};
use crate::counters::{window_start, Item, Store};
use crate::rls_proto::{
    Code, DescriptorStatus, Duration, RateLimit, RateLimitRequest, RateLimitResponse,
};

pub struct Rls {
    pub config: Config,
    pub store: Store,
}

impl Rls {
    pub async fn should_rate_limit(
        &self,
        req: RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        if req.domain != self.config.domain {
            // Another domain's limits are not configured here: nothing limits it.
            return Ok(ok_response(req.descriptors.len()));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The request's hits_addend, 0 meaning 1; a descriptor's own hits_addend, when
        // set, replaces it, and there an explicit 0 means "check without counting".
        let request_hits = u64::from(req.hits_addend.max(1));
        // (descriptor index, matched limit, counter key, hits)
        let mut matched: Vec<(usize, Matched, String, u64)> = Vec::new();
        for (i, d) in req.descriptors.iter().enumerate() {
            let entries: Vec<(String, String)> = d
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            if let Some(m) = self.config.matching(&entries) {
                let start = window_start(now, m.window_secs);
                let key = counter_key(&req.domain, &entries, start);
                matched.push((i, m, key, d.hits_addend.unwrap_or(request_hits)));
            }
        }
        if matched.is_empty() {
            return Ok(ok_response(req.descriptors.len()));
        }
        let items: Vec<Item> = matched
            .iter()
            .map(|(_, m, key, hits)| Item {
                key: key.clone(),
                limit: m.limit,
                window_secs: m.window_secs,
                hits: *hits,
            })
            .collect();
        let taken = self
            .store
            .take(&items, now)
            .await
            .map_err(|e| Status::unavailable(format!("counter store: {e}")))?;
        let mut resp = ok_response(req.descriptors.len());
        resp.overall_code = if taken.over {
            Code::OverLimit
        } else {
            Code::Ok
        } as i32;
        for ((i, m, _, hits), count) in matched.iter().zip(&taken.counts) {
            let over = taken.over && *hits > 0 && count + hits > u64::from(m.limit);
            let reset = window_start(now, m.window_secs) + m.window_secs - now;
            if let Some(s) = resp.statuses.get_mut(*i) {
                *s = DescriptorStatus {
                    code: if over { Code::OverLimit } else { Code::Ok } as i32,
                    current_limit: Some(RateLimit {
                        name: m.name.clone(),
                        requests_per_unit: m.limit,
                        unit: m.unit,
                    }),
                    limit_remaining: u32::try_from(u64::from(m.limit).saturating_sub(*count))
                        .unwrap_or(0),
                    duration_until_reset: Some(Duration {
                        seconds: i64::try_from(reset).unwrap_or(i64::MAX),
                        nanos: 0,
                    }),
                };
            }
        }
        Ok(resp)
    }
}

fn ok_response(descriptors: usize) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            };
            descriptors
        ],
    }
}

/// Domain, entries and window start, each part length-prefixed so no value can
/// imitate a separator.
fn counter_key(domain: &str, entries: &[(String, String)], window_start: u64) -> String {
    let mut key = format!("{}:{domain}", domain.len());
    for (k, v) in entries {
        key.push_str(&format!("|{}:{k}={}:{v}", k.len(), v.len()));
    }
    key.push_str(&format!("|{window_start}"));
    key
}

/// The tonic service: routes `/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Rls>,
}

impl Server {
    pub fn new(inner: Arc<Rls>) -> Self {
        Server { inner }
    }
}

impl tonic::server::NamedService for Server {
    const NAME: &'static str = crate::rls_proto::SERVICE;
}

struct ShouldRateLimit(Arc<Rls>);

impl tonic::server::UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;
    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let rls = Arc::clone(&self.0);
        Box::pin(async move {
            rls.should_rate_limit(request.into_inner())
                .await
                .map(Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for Server
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let known = req.uri().path()
            == format!(
                "/{}/{}",
                crate::rls_proto::SERVICE,
                crate::rls_proto::METHOD
            );
        Box::pin(async move {
            if known {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(ShouldRateLimit(inner), req).await)
            } else {
                Ok(Status::unimplemented("unknown method").into_http())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls_proto::{Entry, RateLimitDescriptor};

    fn request(user: &str, hits: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "apiguard".into(),
            descriptors: vec![
                RateLimitDescriptor {
                    entries: vec![
                        Entry {
                            key: "limit".into(),
                            value: "per-user".into(),
                        },
                        Entry {
                            key: "user".into(),
                            value: user.into(),
                        },
                    ],
                    hits_addend: None,
                },
                RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "unknown".into(),
                        value: "x".into(),
                    }],
                    hits_addend: None,
                },
            ],
            hits_addend: hits,
        }
    }

    fn rls() -> Rls {
        let config = crate::config::parse(
            "domain: apiguard\ndescriptors:\n  - key: limit\n    value: per-user\n    descriptors:\n      - key: user\n        rate_limit: {unit: minute, requests_per_unit: 3}\n",
        )
        .unwrap();
        Rls {
            config,
            store: Store::memory(),
        }
    }

    #[tokio::test]
    async fn limits_per_value_and_reports_statuses() {
        let rls = rls();
        let r = rls.should_rate_limit(request("alice", 2)).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 2);
        assert_eq!(r.statuses[0].limit_remaining, 1);
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            3
        );
        assert!(r.statuses[0].duration_until_reset.unwrap().seconds <= 60);
        assert_eq!(r.statuses[1].current_limit, None);
        let r = rls.should_rate_limit(request("alice", 2)).await.unwrap();
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        // Another value has its own counter; another domain is not limited here.
        let r = rls.should_rate_limit(request("bob", 3)).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        let mut other = request("alice", 9);
        other.domain = "other".into();
        assert_eq!(
            rls.should_rate_limit(other).await.unwrap().overall_code,
            Code::Ok as i32
        );
    }

    /// A descriptor's own hits_addend replaces the request's; 0 checks without counting
    /// and reports what is left (apiguard's lockout peek reads `limit_remaining` 0 as locked).
    #[tokio::test]
    async fn per_descriptor_hits_and_check_only() {
        let rls = rls();
        let with_hits = |hits| {
            let mut r = request("carol", 9);
            r.descriptors[0].hits_addend = Some(hits);
            r
        };
        let r = rls.should_rate_limit(with_hits(0)).await.unwrap();
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (Code::Ok as i32, 3)
        );
        for left in [2, 1, 0] {
            let r = rls.should_rate_limit(with_hits(1)).await.unwrap();
            assert_eq!(
                (r.overall_code, r.statuses[0].limit_remaining),
                (Code::Ok as i32, left)
            );
        }
        // Empty: a peek is still OK with nothing left, a charge is over and writes nothing.
        let r = rls.should_rate_limit(with_hits(0)).await.unwrap();
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (Code::Ok as i32, 0)
        );
        let r = rls.should_rate_limit(with_hits(1)).await.unwrap();
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    }

    #[test]
    fn counter_keys_cannot_be_imitated() {
        let a = counter_key("d", &[("k".into(), "a|1:k=1:b".into())], 0);
        let b = counter_key(
            "d",
            &[("k".into(), "a".into()), ("k".into(), "b".into())],
            0,
        );
        assert_ne!(a, b);
    }
}
