//! Fixed-window counters (envoyproxy/ratelimit's model): one counter per descriptor and
//! window, keyed by the window's start, expiring with it.
//!
//! A check is all-or-nothing over the request's descriptors: every counter is read and,
//! only if all of them stay within their limits, all are incremented. In Redis that is
//! one Lua script, which Redis runs atomically, so a limit of N admits exactly N per
//! window however many RLS replicas and Envoys ask at once. A refused request writes
//! nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// KEYS: counters. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: limit, window and hits of KEYS[i].
/// Returns {over, count_1, ..., count_n}: counts after the take, or as read if over.
/// A counter with hits 0 is only read (a check without counting: never over, never
/// created).
const CHECK_AND_TAKE: &str = r"
local over = 0
local counts = {}
for i = 1, #KEYS do
  local hits = tonumber(ARGV[3 * i])
  counts[i] = tonumber(redis.call('get', KEYS[i]) or '0')
  if hits > 0 and counts[i] + hits > tonumber(ARGV[3 * i - 2]) then over = 1 end
end
if over == 0 then
  for i = 1, #KEYS do
    local hits = tonumber(ARGV[3 * i])
    if hits > 0 then
      counts[i] = redis.call('incrby', KEYS[i], hits)
      if counts[i] == hits then redis.call('expire', KEYS[i], ARGV[3 * i - 1]) end
    end
  end
end
table.insert(counts, 1, over)
return counts
";

/// One counter to check: its key (descriptor entries and window start), limit, window.
pub struct Item {
    pub key: String,
    pub limit: u32,
    pub window_secs: u64,
    /// What this request adds (0: read only).
    pub hits: u64,
}

pub struct Taken {
    pub over: bool,
    /// Per item: the count after the take (or as read, when over).
    pub counts: Vec<u64>,
}

pub enum Store {
    Redis(ConnectionManager, redis::Script),
    Memory(Mutex<HashMap<String, (u64, u64)>>),
}

impl Store {
    pub async fn redis(url: &str) -> Result<Store, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
        // Short timeouts: while Redis is down a check fails fast (the client's on_error
        // decides) instead of waiting on a dead connection; the manager reconnects.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| format!("redis {url}: {e}"))?;
        Ok(Store::Redis(conn, redis::Script::new(CHECK_AND_TAKE)))
    }

    pub fn memory() -> Store {
        Store::Memory(Mutex::new(HashMap::new()))
    }

    pub async fn take(&self, items: &[Item], now_secs: u64) -> Result<Taken, String> {
        match self {
            Store::Redis(conn, script) => {
                let mut inv = script.prepare_invoke();
                for it in items {
                    inv.key(format!("apiguard-rls:{}", it.key));
                    inv.arg(it.limit).arg(it.window_secs).arg(it.hits);
                }
                let mut conn = conn.clone();
                let mut out: Vec<u64> = inv
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let over = out.first().copied().unwrap_or(1) == 1;
                out.remove(0);
                Ok(Taken { over, counts: out })
            }
            Store::Memory(map) => {
                let mut map = map
                    .lock()
                    .map_err(|_| "counter lock poisoned".to_string())?;
                map.retain(|_, (_, expires)| *expires > now_secs);
                let counts: Vec<u64> = items
                    .iter()
                    .map(|it| map.get(&it.key).map_or(0, |(c, _)| *c))
                    .collect();
                let over = items
                    .iter()
                    .zip(&counts)
                    .any(|(it, c)| it.hits > 0 && c + it.hits > u64::from(it.limit));
                if over {
                    return Ok(Taken { over, counts });
                }
                let counts = items
                    .iter()
                    .zip(counts)
                    .map(|(it, count)| {
                        if it.hits == 0 {
                            return count;
                        }
                        let expires = window_start(now_secs, it.window_secs) + it.window_secs;
                        let e = map.entry(it.key.clone()).or_insert((0, expires));
                        e.0 += it.hits;
                        e.0
                    })
                    .collect();
                Ok(Taken { over, counts })
            }
        }
    }
}

pub fn window_start(now_secs: u64, window_secs: u64) -> u64 {
    now_secs - now_secs % window_secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, limit: u32) -> Item {
        Item {
            key: key.into(),
            limit,
            window_secs: 60,
            hits: 1,
        }
    }

    #[tokio::test]
    async fn memory_is_all_or_nothing_and_exact() {
        let s = Store::memory();
        let items = [item("a", 3), item("b", 10)];
        for n in 1..=3 {
            let t = s.take(&items, 120).await.unwrap();
            assert!(!t.over);
            assert_eq!(t.counts, vec![n, n]);
        }
        let t = s.take(&items, 121).await.unwrap();
        assert!(t.over);
        // The refused take wrote nothing, on either counter.
        assert_eq!(s.take(&[item("b", 10)], 121).await.unwrap().counts, vec![4]);
        // A check without counting (hits 0) reads the full counter and is never over.
        let peek = Item {
            hits: 0,
            ..item("a", 3)
        };
        let t = s.take(&[peek], 121).await.unwrap();
        assert_eq!((t.over, t.counts.clone()), (false, vec![3]));
        // Next window: the key in use carries the window start (the server builds it).
        assert_eq!(window_start(185, 60), 180);
    }
}
