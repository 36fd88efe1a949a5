//! Every remote JWKS of one VM, driven by the root context: which fetches are in flight
//! and until when, what a tick, a response or a failed dispatch leads to, what to report
//! (a counter and log lines), and installing a newly published generation into the
//! worker's `Engine`. The glue only makes the HTTP calls and writes the reports.

use std::collections::HashMap;
use std::rc::Rc;

use super::{FetchEvent, FetchRequest, JwksSync};
use crate::engine::Engine;
use crate::host::SharedStore;
use crate::jwt::Jwks;
use crate::outcome::LogAt;
use crate::policy::{KeySource, Policy};

/// Our own deadline past a call's timeout: a cluster without a healthy endpoint can leave
/// a call queued in Envoy with no answer at all.
pub const DEADLINE_GRACE_MS: u64 = 1_000;

/// One remote provider as this VM sees it.
struct Remote {
    provider: usize,
    name: String,
    sync: JwksSync,
    /// The shared generation last installed into the engine (or found unusable).
    parsed_generation: Option<u64>,
}

/// A JWKS (or discovery document) fetch to dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub remote: usize,
    pub request: FetchRequest,
}

impl Fetch {
    /// The request's headers: a plain GET that asks for JSON.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        vec![
            (":method", "GET"),
            (":path", self.request.path.as_str()),
            (":authority", self.request.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", "apiguard"),
        ]
    }
}

/// What to report about a finished fetch: one counter and log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub counter: String,
    pub lines: Vec<(LogAt, String)>,
}

/// What a response or a tick leads to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Steps {
    pub reports: Vec<Report>,
    pub fetches: Vec<Fetch>,
}

pub struct Remotes {
    remotes: Vec<Remote>,
    /// Dispatched calls: host token → (index into `remotes`, deadline in ms).
    in_flight: HashMap<u32, (usize, u64)>,
}

impl Remotes {
    /// The policy's remote providers; `nonce` tells this VM's lease claims apart.
    pub fn new(policy: &Policy, nonce: u64) -> Remotes {
        let remotes = policy
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match &p.keys {
                KeySource::Remote(spec) => Some(Remote {
                    provider: i,
                    name: p.name.clone(),
                    sync: JwksSync::new(spec.clone(), nonce.wrapping_add(i as u64)),
                    parsed_generation: None,
                }),
                KeySource::Inline(_) => None,
            })
            .collect();
        Remotes {
            remotes,
            in_flight: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remotes.is_empty()
    }

    /// Overdue calls count as failed; every remote without a call in flight may start one.
    pub fn on_tick(&mut self, now: u64, store: &dyn SharedStore) -> Steps {
        let mut steps = Steps::default();
        let expired: Vec<(u32, usize)> = self
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| now > *deadline)
            .map(|(t, (r, _))| (*t, *r))
            .collect();
        for (token, remote) in expired {
            self.in_flight.remove(&token);
            steps.reports.extend(self.timed_out(remote, now, store));
        }
        for (i, r) in self.remotes.iter_mut().enumerate() {
            if self.in_flight.values().any(|(busy, _)| *busy == i) {
                continue;
            }
            if let Some(request) = r.sync.on_tick(now, store) {
                steps.fetches.push(Fetch { remote: i, request });
            }
        }
        steps
    }

    /// The host accepted a fetch under `token`.
    pub fn dispatched(&mut self, token: u32, fetch: &Fetch, now: u64) {
        let deadline = now
            .saturating_add(fetch.request.timeout_ms)
            .saturating_add(DEADLINE_GRACE_MS);
        self.in_flight.insert(token, (fetch.remote, deadline));
    }

    /// The host refused the call (no such cluster): a failed fetch.
    pub fn dispatch_failed(
        &mut self,
        fetch: &Fetch,
        now: u64,
        store: &dyn SharedStore,
    ) -> Option<Report> {
        self.timed_out(fetch.remote, now, store)
    }

    /// The remote a response belongs to, if it is one of ours still in flight.
    pub fn take(&mut self, token: u32) -> Option<usize> {
        self.in_flight.remove(&token).map(|(remote, _)| remote)
    }

    /// A response for `remote` (from `take`): its report, and a follow-up fetch (the JWKS
    /// a discovery document named).
    pub fn on_response(
        &mut self,
        remote: usize,
        now: u64,
        store: &dyn SharedStore,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> Steps {
        let Some(r) = self.remotes.get_mut(remote) else {
            return Steps::default();
        };
        let (next, event) = r.sync.on_response(now, store, status, body);
        Steps {
            reports: event.map(|e| report(&r.name, e)).into_iter().collect(),
            fetches: next
                .map(|request| Fetch { remote, request })
                .into_iter()
                .collect(),
        }
    }

    /// Providers that saw an unknown `kid` ask for an early refetch.
    pub fn request_refetch(&self, providers: &[usize], now: u64, store: &dyn SharedStore) {
        for r in &self.remotes {
            if providers.contains(&r.provider) {
                r.sync.request_refetch(now, store);
            }
        }
    }

    /// Installs into `engine` every generation another VM (or this one) published since
    /// the last look. A generation without a usable key is skipped (the old keys stay).
    /// Keys another VM published since this VM's last tick, for a provider this VM has
    /// no keys for yet: a request would otherwise be answered 503 `jwks_unavailable` until
    /// the next tick. A VM with every provider's keys reads nothing (no host call).
    pub fn install_missing_keys(&mut self, store: &dyn SharedStore, engine: &mut Engine) {
        if self
            .remotes
            .iter()
            .all(|r| engine.keys_generation(r.provider).is_some())
        {
            return;
        }
        self.install_new_keys(store, engine);
    }

    pub fn install_new_keys(&mut self, store: &dyn SharedStore, engine: &mut Engine) {
        for r in &mut self.remotes {
            let Some(generation) = r.sync.shared_generation(store) else {
                continue;
            };
            if r.parsed_generation == Some(generation) {
                continue;
            }
            let Some(shared) = r.sync.shared_keys(store) else {
                continue;
            };
            if let Ok(parsed) = Jwks::parse(&shared.jwks_json) {
                if !parsed.jwks.is_empty() {
                    engine.set_keys(r.provider, Rc::new(parsed.jwks), shared.generation);
                }
            }
            r.parsed_generation = Some(shared.generation);
        }
    }

    fn timed_out(&mut self, remote: usize, now: u64, store: &dyn SharedStore) -> Option<Report> {
        let r = self.remotes.get_mut(remote)?;
        let event = r.sync.on_timeout(now, store)?;
        Some(report(&r.name, event))
    }
}

/// The `:status` of a response, when it is a number.
pub fn parse_status(value: Option<&[u8]>) -> Option<u16> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

/// A fetch's counter and log lines.
pub fn report(provider: &str, event: FetchEvent) -> Report {
    match event {
        FetchEvent::Published {
            generation,
            keys,
            rejected,
        } => {
            let mut lines = vec![(
                LogAt::Info,
                format!("apiguard: JWKS of `{provider}` published: {keys} key(s), generation {generation}"),
            )];
            lines.extend(
                rejected
                    .into_iter()
                    .map(|r| (LogAt::Warn, format!("apiguard: JWKS of `{provider}`: skipped {r}"))),
            );
            Report {
                counter: format!("apiguard.jwks.{provider}.fetch_success"),
                lines,
            }
        }
        FetchEvent::Failed { reason } => Report {
            counter: format!("apiguard.jwks.{provider}.fetch_failure"),
            lines: vec![(
                LogAt::Warn,
                format!("apiguard: JWKS fetch for `{provider}` failed: {reason}; keeping the last good keys"),
            )],
        },
    }
}

#[cfg(test)]
mod tests;
