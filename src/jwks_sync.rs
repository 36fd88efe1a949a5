//! Remote JWKS, fetched once for the whole Envoy and shared by every VM.
//!
//! Envoy runs one VM per worker thread (plus one on the main thread). Each has its own
//! root context and tick, and all of them share one key/value store ("shared data", with
//! compare-and-swap). A [`JwksSync`] per VM and per remote provider coordinates them:
//!
//! * On each tick, a VM reads the provider's lease record. When a fetch is due (refresh
//!   interval elapsed, retry interval elapsed after a failure, or an early refetch was
//!   requested) and the lease is free or expired, the VM takes it by CAS and fetches.
//!   Losers of the CAS do nothing: exactly one VM fetches.
//! * The lease expires `timeout_ms + LEASE_MARGIN_MS` after it was taken (renewed for
//!   the second request of the discovery flow), so a VM that dies mid-fetch delays the
//!   next fetch by at most that much.
//! * A good document is published (keys record, then generation record) and the lease is
//!   released with the next refresh time. A bad one (no answer, non-200, garbage, no usable
//!   key) leaves the last-known-good keys in place and schedules a retry after `retry_ms`.
//! * Every VM polls the small generation record each tick and reads the keys record only
//!   when the generation moved.
//!
//! # Records
//!
//! Keys live under `apiguard.jwks.<provider>.<hash>.` where `<hash>` is 16 hex digits of
//! SHA-256 over (cluster, uri, discovery): a provider whose source is unchanged keeps its
//! keys across policy reloads, a changed source starts fresh. All integers are big-endian
//! `u64`; each record starts with a 4-byte magic that doubles as a format version, and a
//! record that does not decode is treated as absent (or replaced, for the lease).
//!
//! | key        | layout                                                        |
//! |------------|---------------------------------------------------------------|
//! | `.lease`   | `AGL1` holder until_ms next_due_ms last_start_ms (36 bytes)     |
//! | `.refetch` | `AGR1` accepted_at_ms (12 bytes)                              |
//! | `.gen`     | `AGG1` generation (12 bytes)                                  |
//! | `.keys`    | `AGK1` generation fetched_at_ms, then the JWKS document bytes |
//!
//! `holder` is the VM nonce of the fetching VM (0 when free); the lease is held while
//! `now < until_ms`. An early refetch is pending while `accepted_at_ms > last_start_ms`,
//! so starting any fetch consumes it and nobody has to clear it.
//!
//! # Creating the lease
//!
//! Envoy has no atomic create-if-absent: a write to an absent key succeeds whatever CAS
//! token it carries, so two VMs that both saw "absent" would both believe they created
//! it. The lease is therefore never *taken* from an absent key. A VM that finds no lease
//! writes (unconditionally) a free record that is held by nobody for
//! `LEASE_CREATE_SETTLE_MS`; after that, VMs compete for it by CAS only. Several VMs
//! creating it at once is harmless (they write equivalent records). The one remaining
//! hazard is a VM whose get-then-set around "create" spans the whole settle time and
//! overwrites a lease already taken: its worst outcome is one extra fetch, and publishing
//! stays consistent because the keys and generation records are written by CAS too.
//! Once created, the lease record is never deleted, so this happens once per namespace
//! per Envoy process.

use crate::host::{CasError, SharedStore};
use crate::jwt::Jwks;
use sha2::{Digest, Sha256};

/// Added to the fetch timeout to get the lease lifetime: covers the glue's own deadline
/// slack and tick granularity, so a live holder always answers before its lease lapses.
pub const LEASE_MARGIN_MS: u64 = 2_000;
/// Larger JWKS documents are refused (real ones are a few KiB).
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Larger discovery documents are refused.
pub const MAX_DISCOVERY_BYTES: usize = 256 << 10;
/// Path of the OIDC discovery document, relative to the issuer.
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// A newly created lease is unavailable this long, so that a VM whose "create" write was
/// delayed cannot clobber a lease already taken (see the module doc).
pub const LEASE_CREATE_SETTLE_MS: u64 = 200;
/// Bounded retries when a CAS write loses a race while publishing.
const CAS_ATTEMPTS: usize = 4;
/// Longest URI accepted (and echoed in messages).
const MAX_URI_BYTES: usize = 4096;

const LEASE_MAGIC: &[u8; 4] = b"AGL1";
const REFETCH_MAGIC: &[u8; 4] = b"AGR1";
const GEN_MAGIC: &[u8; 4] = b"AGG1";
const KEYS_MAGIC: &[u8; 4] = b"AGK1";

/// Where and how often to fetch one provider's JWKS. Built (and validated) by the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// Provider name (part of the shared-data namespace).
    pub provider: String,
    /// Envoy cluster the calls go through.
    pub cluster: String,
    /// `http(s)://authority/path?query`: the JWKS, or with `discovery` the issuer (or its
    /// discovery document).
    pub uri: String,
    /// Fetch the OIDC discovery document first and follow its `jwks_uri`.
    pub discovery: bool,
    pub refresh_ms: u64,
    /// Delay before retrying after a failed fetch.
    pub retry_ms: u64,
    /// Per HTTP call.
    pub timeout_ms: u64,
    /// Process-wide minimum spacing of early refetches (unknown `kid`).
    pub min_refetch_ms: u64,
}

impl RemoteSpec {
    /// Config-time check: scheme `http` or `https`, non-empty authority without userinfo,
    /// path starting with `/`, no fragment, printable ASCII only.
    pub fn validate_uri(uri: &str) -> Result<(), String> {
        Target::parse(uri).map(|_| ())
    }

    /// `apiguard.jwks.<provider>.<hash of cluster, uri, discovery>`.
    fn namespace(&self) -> String {
        let mut h = Sha256::new();
        for part in [self.cluster.as_bytes(), self.uri.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update([u8::from(self.discovery)]);
        let digest = h.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("apiguard.jwks.{}.{hex}", self.provider)
    }
}

/// One HTTP GET to dispatch. The glue adds `:method`, `:scheme` and `accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub cluster: String,
    pub authority: String,
    /// Path and query.
    pub path: String,
    pub timeout_ms: u64,
}

/// Outcome of a fetch this VM performed, for stats and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    Published {
        generation: u64,
        keys: usize,
        /// One message per key of the document that was not usable.
        rejected: Vec<String>,
    },
    /// The last-known-good keys stay in place; a retry is scheduled.
    Failed { reason: String },
}

/// The current keys of a provider as published in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKeys {
    pub generation: u64,
    pub fetched_at_ms: u64,
    /// The JWKS document exactly as fetched (it parsed and had a usable key).
    pub jwks_json: Vec<u8>,
}

/// Authority and path of a URI, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(uri: &str) -> Result<Target, String> {
        if uri.len() > MAX_URI_BYTES {
            return Err(format!("URI longer than {MAX_URI_BYTES} bytes"));
        }
        if !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "URI must be printable ASCII without spaces (percent-encode the rest)".into(),
            );
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err("URI must start with http:// or https://".into());
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(format!("URI scheme must be http or https, not {scheme:?}"));
        }
        if rest.contains('#') {
            return Err("URI must not have a fragment".into());
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err("URI has an empty authority".into());
        }
        if authority.contains('@') {
            return Err("URI must not carry credentials (user@host)".into());
        }
        if !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
        {
            return Err(format!("URI authority {authority:?} is not a host[:port]"));
        }
        if !path.starts_with('/') {
            return Err("URI path must start with '/'".into());
        }
        if let Some(c) = path.chars().find(|c| "\"<>\\^`{|}".contains(*c)) {
            return Err(format!("URI path has {c:?} (percent-encode it)"));
        }
        Ok(Target {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// The discovery document of an issuer URI (kept as is when it already names it).
    fn discovery_of(issuer: Target) -> Target {
        let (path, query) = match issuer.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (issuer.path.as_str(), None),
        };
        let mut path = if path.ends_with(WELL_KNOWN) {
            path.to_string()
        } else {
            format!("{}{WELL_KNOWN}", path.trim_end_matches('/'))
        };
        if let Some(q) = query {
            path.push('?');
            path.push_str(q);
        }
        Target {
            authority: issuer.authority,
            path,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Lease {
    /// Nonce of the fetching VM; 0 when free.
    holder: u64,
    /// Held while `now < until_ms`.
    until_ms: u64,
    /// When the next regular fetch (refresh or retry) is due.
    next_due_ms: u64,
    /// When the last fetch started: early refetches accepted before it are consumed.
    last_start_ms: u64,
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(36);
        out.extend_from_slice(LEASE_MAGIC);
        for v in [
            self.holder,
            self.until_ms,
            self.next_due_ms,
            self.last_start_ms,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Lease> {
        if b.len() != 36 || b.get(..4)? != LEASE_MAGIC {
            return None;
        }
        Some(Lease {
            holder: be_u64(b, 4)?,
            until_ms: be_u64(b, 12)?,
            next_due_ms: be_u64(b, 20)?,
            last_start_ms: be_u64(b, 28)?,
        })
    }
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// `magic` followed by one u64.
fn encode_u64(magic: &[u8; 4], v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(magic);
    out.extend_from_slice(&v.to_be_bytes());
    out
}

fn decode_u64(magic: &[u8; 4], b: &[u8]) -> Option<u64> {
    if b.len() != 12 || b.get(..4)? != magic {
        return None;
    }
    be_u64(b, 4)
}

fn encode_keys(generation: u64, fetched_at_ms: u64, jwks: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(jwks.len().saturating_add(20));
    out.extend_from_slice(KEYS_MAGIC);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&fetched_at_ms.to_be_bytes());
    out.extend_from_slice(jwks);
    out
}

fn decode_keys(b: &[u8]) -> Option<SharedKeys> {
    if b.get(..4)? != KEYS_MAGIC {
        return None;
    }
    Some(SharedKeys {
        generation: be_u64(b, 4)?,
        fetched_at_ms: be_u64(b, 12)?,
        jwks_json: b.get(20..)?.to_vec(),
    })
}

/// Shared-data key names of one provider.
struct Keys {
    namespace: String,
    lease: String,
    refetch: String,
    generation: String,
    keys: String,
}

impl Keys {
    fn new(namespace: String) -> Keys {
        Keys {
            lease: format!("{namespace}.lease"),
            refetch: format!("{namespace}.refetch"),
            generation: format!("{namespace}.gen"),
            keys: format!("{namespace}.keys"),
            namespace,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Discovery,
    Jwks,
}

/// The call this VM has dispatched, under the lease it wrote.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    step: Step,
    /// `until_ms` of the lease record we wrote: with our nonce, proves we still hold it.
    lease_until: u64,
}

/// Per-VM state of one remote provider.
pub struct JwksSync {
    spec: RemoteSpec,
    nonce: u64,
    keys: Keys,
    /// The JWKS URI, or the discovery document with `discovery`. `Err` only for a spec
    /// that skipped `validate_uri`: such a provider never fetches.
    source: Result<Target, String>,
    /// `jwks_uri` from the last good discovery document; forgotten when a JWKS fetch
    /// fails, so the next attempt re-discovers.
    discovered: Option<Target>,
    in_flight: Option<InFlight>,
}

impl JwksSync {
    pub fn new(spec: RemoteSpec, vm_nonce: u64) -> Self {
        let source = Target::parse(&spec.uri).map(|t| {
            if spec.discovery {
                Target::discovery_of(t)
            } else {
                t
            }
        });
        JwksSync {
            keys: Keys::new(spec.namespace()),
            spec,
            nonce: vm_nonce,
            source,
            discovered: None,
            in_flight: None,
        }
    }

    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// Shared-data key prefix of this provider (for logs).
    pub fn namespace(&self) -> &str {
        &self.keys.namespace
    }

    /// Called on every root tick. Returns a request when this VM won the lease and must
    /// fetch now.
    pub fn on_tick(&mut self, now_ms: u64, store: &dyn SharedStore) -> Option<FetchRequest> {
        if let Some(flight) = self.in_flight {
            if now_ms < flight.lease_until {
                return None;
            }
            // Our lease lapsed without an answer (the glue should have called on_timeout):
            // another VM may own the fetch by now, so leave the schedule alone.
            self.in_flight = None;
            if flight.step == Step::Jwks {
                self.discovered = None;
            }
        }
        let (lease, cas) = match store.get(&self.keys.lease) {
            None => {
                // No atomic create: write a settling free lease, compete for it later.
                let _ = store.set(&self.keys.lease, &self.settling(now_ms), None);
                return None;
            }
            Some((bytes, cas)) => match Lease::decode(&bytes) {
                Some(lease) => (lease, cas),
                None => {
                    // Another format (e.g. another module version): replace it by CAS.
                    let _ = store.set(&self.keys.lease, &self.settling(now_ms), Some(cas));
                    return None;
                }
            },
        };
        if now_ms < lease.until_ms {
            return None;
        }
        if now_ms < lease.next_due_ms && !self.refetch_pending(store, &lease) {
            return None;
        }
        let (step, target) = match (&self.discovered, &self.source) {
            (Some(jwks), _) => (Step::Jwks, jwks.clone()),
            (None, Ok(source)) if self.spec.discovery => (Step::Discovery, source.clone()),
            (None, Ok(source)) => (Step::Jwks, source.clone()),
            (None, Err(_)) => return None,
        };
        let until = self.lease_deadline(now_ms);
        let mine = Lease {
            holder: self.nonce,
            until_ms: until,
            next_due_ms: lease.next_due_ms,
            last_start_ms: now_ms,
        };
        store
            .set(&self.keys.lease, &mine.encode(), Some(cas))
            .ok()?;
        self.in_flight = Some(InFlight {
            step,
            lease_until: until,
        });
        Some(self.request(target))
    }

    /// Called with the answer to the request this VM dispatched (`None`s on timeout or
    /// reset). May return the follow-up request (discovery, then JWKS).
    pub fn on_response(
        &mut self,
        now_ms: u64,
        store: &dyn SharedStore,
        status: Option<u16>,
        body: Option<&[u8]>,
    ) -> (Option<FetchRequest>, Option<FetchEvent>) {
        // A late answer to a call we already gave up on is ignored.
        let Some(flight) = self.in_flight.take() else {
            return (None, None);
        };
        match flight.step {
            Step::Discovery => match parse_discovery(status, body) {
                Ok(jwks) => {
                    self.discovered = Some(jwks.clone());
                    let until = self.lease_deadline(now_ms);
                    if !self.renew(store, flight.lease_until, until) {
                        let reason = "lease lost after discovery; another VM fetches".into();
                        return (None, Some(FetchEvent::Failed { reason }));
                    }
                    self.in_flight = Some(InFlight {
                        step: Step::Jwks,
                        lease_until: until,
                    });
                    (Some(self.request(jwks)), None)
                }
                Err(why) => {
                    self.release(store, now_ms, flight, false);
                    let reason = format!("discovery: {why}");
                    (None, Some(FetchEvent::Failed { reason }))
                }
            },
            Step::Jwks => {
                let outcome = check_jwks(status, body).and_then(|(parsed, body)| {
                    let generation = self.publish(store, now_ms, body)?;
                    Ok(FetchEvent::Published {
                        generation,
                        keys: parsed.jwks.len(),
                        rejected: parsed.rejected,
                    })
                });
                let ok = outcome.is_ok();
                if !ok {
                    self.discovered = None;
                }
                self.release(store, now_ms, flight, ok);
                let event = outcome.unwrap_or_else(|reason| FetchEvent::Failed { reason });
                (None, Some(event))
            }
        }
    }

    /// The glue's deadline for the dispatched call passed (or the dispatch failed).
    pub fn on_timeout(&mut self, now_ms: u64, store: &dyn SharedStore) -> Option<FetchEvent> {
        let flight = self.in_flight.take()?;
        let reason = match flight.step {
            Step::Discovery => "discovery: no response in time".to_string(),
            Step::Jwks => {
                self.discovered = None;
                "no response in time".to_string()
            }
        };
        self.release(store, now_ms, flight, false);
        Some(FetchEvent::Failed { reason })
    }

    /// A token named a `kid` we do not have: ask for an early refetch, honored on the next
    /// tick by whichever VM wins the lease. At most one is accepted per `min_refetch_ms`
    /// across the process; returns whether this one was.
    pub fn request_refetch(&self, now_ms: u64, store: &dyn SharedStore) -> bool {
        let cas = match store.get(&self.keys.refetch) {
            None => None,
            Some((bytes, cas)) => {
                if let Some(at) = decode_u64(REFETCH_MAGIC, &bytes) {
                    // A clock that went backwards does not block refetches.
                    if now_ms >= at && now_ms - at < self.spec.min_refetch_ms {
                        return false;
                    }
                }
                Some(cas)
            }
        };
        // A CAS mismatch means another worker recorded one just now.
        store
            .set(&self.keys.refetch, &encode_u64(REFETCH_MAGIC, now_ms), cas)
            .is_ok()
    }

    /// The published generation, from a 12-byte record: cheap enough for every tick.
    pub fn shared_generation(&self, store: &dyn SharedStore) -> Option<u64> {
        let (bytes, _) = store.get(&self.keys.generation)?;
        decode_u64(GEN_MAGIC, &bytes)
    }

    /// The published keys; read only when the generation changed.
    pub fn shared_keys(&self, store: &dyn SharedStore) -> Option<SharedKeys> {
        let (bytes, _) = store.get(&self.keys.keys)?;
        decode_keys(&bytes)
    }

    /// A free lease nobody may take before `LEASE_CREATE_SETTLE_MS` from now.
    fn settling(&self, now_ms: u64) -> Vec<u8> {
        Lease {
            until_ms: now_ms.saturating_add(LEASE_CREATE_SETTLE_MS),
            ..Lease::default()
        }
        .encode()
    }

    fn request(&self, target: Target) -> FetchRequest {
        FetchRequest {
            cluster: self.spec.cluster.clone(),
            authority: target.authority,
            path: target.path,
            timeout_ms: self.spec.timeout_ms,
        }
    }

    fn lease_deadline(&self, now_ms: u64) -> u64 {
        now_ms
            .saturating_add(self.spec.timeout_ms)
            .saturating_add(LEASE_MARGIN_MS)
    }

    fn refetch_pending(&self, store: &dyn SharedStore, lease: &Lease) -> bool {
        store
            .get(&self.keys.refetch)
            .and_then(|(bytes, _)| decode_u64(REFETCH_MAGIC, &bytes))
            .is_some_and(|at| at > lease.last_start_ms)
    }

    /// The lease record, with its CAS token, if this VM still holds the lease of `flight`.
    fn held(&self, store: &dyn SharedStore, lease_until: u64) -> Option<(Lease, u32)> {
        let (bytes, cas) = store.get(&self.keys.lease)?;
        let lease = Lease::decode(&bytes)?;
        (lease.holder == self.nonce && lease.until_ms == lease_until).then_some((lease, cas))
    }

    /// Extends our lease for the follow-up request.
    fn renew(&self, store: &dyn SharedStore, lease_until: u64, until: u64) -> bool {
        let Some((lease, cas)) = self.held(store, lease_until) else {
            return false;
        };
        let renewed = Lease {
            until_ms: until,
            ..lease
        };
        store
            .set(&self.keys.lease, &renewed.encode(), Some(cas))
            .is_ok()
    }

    /// Frees our lease and schedules the next fetch. When someone took the lease over
    /// (ours had lapsed), their schedule wins and we leave it alone.
    fn release(&self, store: &dyn SharedStore, now_ms: u64, flight: InFlight, ok: bool) {
        let Some((lease, cas)) = self.held(store, flight.lease_until) else {
            return;
        };
        let wait = if ok {
            self.spec.refresh_ms
        } else {
            self.spec.retry_ms.min(self.spec.refresh_ms)
        };
        let freed = Lease {
            holder: 0,
            until_ms: 0,
            next_due_ms: now_ms.saturating_add(wait),
            last_start_ms: lease.last_start_ms,
        };
        // On failure the lease lapses on its own and the fetch is simply retried then.
        let _ = store.set(&self.keys.lease, &freed.encode(), Some(cas));
    }

    /// Writes the keys record, then the generation record (so a VM that sees the new
    /// generation finds keys at least that new). Returns the new generation.
    fn publish(&self, store: &dyn SharedStore, now_ms: u64, jwks: &[u8]) -> Result<u64, String> {
        for _ in 0..CAS_ATTEMPTS {
            let current = store.get(&self.keys.keys);
            let from_keys = current
                .as_ref()
                .and_then(|(b, _)| decode_keys(b))
                .map_or(0, |k| k.generation);
            let from_gen = self.shared_generation(store).unwrap_or(0);
            let generation = from_keys.max(from_gen).saturating_add(1);
            let record = encode_keys(generation, now_ms, jwks);
            // Absent: only the lease holder publishes, so an unconditional create is fine.
            match store.set(&self.keys.keys, &record, current.map(|(_, cas)| cas)) {
                Ok(()) => {
                    self.write_generation(store, generation)?;
                    return Ok(generation);
                }
                Err(CasError::Mismatch) => continue,
                Err(CasError::Failed) => return Err("shared data refused the keys record".into()),
            }
        }
        Err("kept losing the race to publish the keys".into())
    }

    fn write_generation(&self, store: &dyn SharedStore, generation: u64) -> Result<(), String> {
        let record = encode_u64(GEN_MAGIC, generation);
        for _ in 0..CAS_ATTEMPTS {
            let cas = match store.get(&self.keys.generation) {
                Some((bytes, cas)) => {
                    if decode_u64(GEN_MAGIC, &bytes).is_some_and(|g| g >= generation) {
                        // Someone published newer keys meanwhile.
                        return Ok(());
                    }
                    Some(cas)
                }
                None => None,
            };
            match store.set(&self.keys.generation, &record, cas) {
                Ok(()) => return Ok(()),
                Err(CasError::Mismatch) => continue,
                Err(CasError::Failed) => {
                    return Err("shared data refused the generation record".into())
                }
            }
        }
        Err("kept losing the race to publish the generation".into())
    }
}

fn check_status(status: Option<u16>) -> Result<(), String> {
    match status {
        Some(200) => Ok(()),
        Some(s) => Err(format!("HTTP status {s}")),
        None => Err("no response (timeout or connection reset)".into()),
    }
}

fn check_body(body: Option<&[u8]>, max: usize) -> Result<&[u8], String> {
    match body {
        None | Some([]) => Err("empty body".into()),
        Some(b) if b.len() > max => Err(format!("body larger than {max} bytes")),
        Some(b) => Ok(b),
    }
}

/// The `jwks_uri` of a discovery document.
fn parse_discovery(status: Option<u16>, body: Option<&[u8]>) -> Result<Target, String> {
    check_status(status)?;
    let body = check_body(body, MAX_DISCOVERY_BYTES)?;
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not valid JSON: {e}"))?;
    let uri = doc
        .get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or("no \"jwks_uri\" string")?;
    Target::parse(uri).map_err(|e| {
        let shown: String = uri.chars().take(200).collect();
        format!("jwks_uri {shown:?}: {e}")
    })
}

/// A JWKS document worth publishing: it parses and has at least one usable key.
fn check_jwks(
    status: Option<u16>,
    body: Option<&[u8]>,
) -> Result<(crate::jwt::ParsedJwks, &[u8]), String> {
    check_status(status)?;
    let body = check_body(body, MAX_JWKS_BYTES)?;
    let parsed = Jwks::parse(body)?;
    if parsed.jwks.is_empty() {
        let mut why = "JWKS has no usable key".to_string();
        if !parsed.rejected.is_empty() {
            let shown: Vec<&str> = parsed.rejected.iter().take(3).map(String::as_str).collect();
            why.push_str(&format!(" ({})", shown.join("; ")));
        }
        return Err(why);
    }
    Ok((parsed, body))
}

pub mod remotes;

#[cfg(test)]
mod tests;
