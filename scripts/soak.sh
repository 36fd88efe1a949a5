#!/usr/bin/env bash
# Key-spray soak: 1,000,000 distinct client addresses (x-forwarded-for, trusted_hops 1)
# against one bounded rate limit (max_buckets 10,000), through a real Envoy with
# apiguard.wasm that this script starts on 127.0.0.1 (ports picked by the OS, via the
# e2e harness). Records Envoy's VmRSS before and after in bench/results/soak.txt.
#
# Not part of `make test`. Runtime is bounded: wrk runs at most SOAK_SECONDS (default
# 200 s) and the whole script is killed after SOAK_TIMEOUT (default 290 s).
#
#   scripts/soak.sh                   # 1M keys
#   SOAK_KEYS=100000 scripts/soak.sh  # quicker
#
# Needs: .venv (make deps), target/wasm32-wasip1/release/apiguard.wasm (or APIGUARD_WASM),
# wrk (apt-get install -y wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

export SOAK_KEYS=${SOAK_KEYS:-1000000}
export SOAK_SECONDS=${SOAK_SECONDS:-200}
export SOAK_THREADS=${SOAK_THREADS:-2}
export SOAK_CONNECTIONS=${SOAK_CONNECTIONS:-64}
export SOAK_CONCURRENCY=${SOAK_CONCURRENCY:-2}
export SOAK_OUT=${SOAK_OUT:-bench/results/soak.txt}
SOAK_TIMEOUT=${SOAK_TIMEOUT:-290}
PY=${PYTHON:-.venv/bin/python}

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk not found: apt-get install -y wrk" >&2
  exit 1
fi
WASM=${APIGUARD_WASM:-target/wasm32-wasip1/release/apiguard.wasm}
if [ ! -f "$WASM" ]; then
  echo "$WASM missing: cargo build --target wasm32-wasip1 --release --lib" >&2
  exit 1
fi
mkdir -p "$(dirname "$SOAK_OUT")"

# The Python driver starts Envoy (harness: PR_SET_PDEATHSIG, so Envoy dies with it) and
# stops it in a finally block; `timeout` bounds the whole run.
exec timeout --kill-after=10 "$SOAK_TIMEOUT" "$PY" - <<'PY'
import json, os, pathlib, shutil, signal, subprocess, sys, tempfile, threading, time

sys.path.insert(0, "e2e")
from harness.envoy import Envoy  # noqa: E402

KEYS = int(os.environ["SOAK_KEYS"])
SECONDS = int(os.environ["SOAK_SECONDS"])
THREADS = int(os.environ["SOAK_THREADS"])
CONNS = int(os.environ["SOAK_CONNECTIONS"])
CONC = int(os.environ["SOAK_CONCURRENCY"])
OUT = pathlib.Path(os.environ["SOAK_OUT"])
MAX_BUCKETS = 10_000

policy = {
    "limits": [{
        "name": "soak", "capacity": 5,
        "refill": {"tokens": 1, "period_seconds": 60},
        "key": [{"client_ip": {"trusted_hops": 1}}],
        "max_buckets": MAX_BUCKETS,
    }],
    "routes": [{"name": "soak", "match": {"prefix": "/"}, "public": True, "limits": ["soak"]}],
}
# Allowed requests get a direct 200 from Envoy itself (the filter runs before the router),
# so no upstream limits the rate. The bootstrap's default cluster is never used.
route_config = {
    "name": "local",
    "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
    ]}],
}

LUA = r'''
local threads = {}
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local per_thread = tonumber(os.getenv("SOAK_PER_THREAD"))
sent, got, s200, s429, other = 0, 0, 0, 0, 0

-- thread i sends addresses i * 2^22 + 1, 2, ...: every request a new key
function request()
  sent = sent + 1
  local n = id * 4194304 + sent
  local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256,
                           math.floor(n / 256) % 256, n % 256)
  if n >= 16777216 then
    ip = string.format("%d.%d.%d.%d", 11 + math.floor(n / 16777216), math.floor(n / 65536) % 256,
                       math.floor(n / 256) % 256, n % 256)
  end
  return wrk.format("GET", "/soak", {["x-forwarded-for"] = "198.51.100.1, " .. ip})
end

function response(status, headers, body)
  got = got + 1
  if status == 200 then s200 = s200 + 1
  elseif status == 429 then s429 = s429 + 1
  else other = other + 1 end
  if got >= per_thread then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local a, b, c, g = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("s200"); b = b + t:get("s429"); c = c + t:get("other"); g = g + t:get("got")
  end
  io.write(string.format("SOAK_RESULT {\"responses\": %d, \"s200\": %d, \"s429\": %d, \"other\": %d, \"errors_connect\": %d, \"errors_read\": %d, \"errors_write\": %d, \"errors_timeout\": %d, \"errors_status\": %d}\n",
    g, a, b, c, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status))
end
'''


def rss_kb(pid: int) -> tuple[int, int]:
    vals = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0])
    return vals["VmRSS"], vals["VmHWM"]


def decided() -> int:
    return sum(envoy.stat(f"apiguard.ratelimit.soak.{k}") for k in ("allowed", "limited"))


def wrk(url, lua, seconds, per_thread, threads=THREADS, conns=CONNS):
    """Runs wrk until every thread has had `per_thread` responses (each thread then stops
    itself; wrk's main thread only wakes at -d or SIGINT, so we SIGINT it once Envoy's
    counters show all of them) or `seconds` pass."""
    env = dict(os.environ, SOAK_PER_THREAD=str(per_thread))
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--timeout", "5s",
           "-s", lua, url]
    want = decided() + per_thread * threads
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + seconds + 30
        while p.poll() is None and time.monotonic() < deadline:
            if decided() >= want:
                time.sleep(0.5)
                p.send_signal(signal.SIGINT)
                break
            time.sleep(0.5)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = None
    for line in out.splitlines():
        if line.startswith("SOAK_RESULT "):
            res = json.loads(line[len("SOAK_RESULT "):])
    if res is None:
        sys.exit(f"wrk failed ({p.returncode}):\n{out}\n{err}")
    return res, out


work = pathlib.Path(tempfile.mkdtemp(prefix="apiguard-soak-"))
lua = work / "spray.lua"
lua.write_text(LUA)
warm_lua = work / "one.lua"
warm_lua.write_text(LUA.replace('"198.51.100.1, " .. ip', '"198.51.100.1, 192.0.2.1"'))

envoy = Envoy(policy, upstream_port=9, concurrency=CONC, workdir=work / "envoy",
              log_level="warn", extra_hcm={"route_config": route_config},
              wasm=os.environ.get("APIGUARD_WASM") or None)
try:
    envoy.start()
    pid = envoy.proc.pid
    url = envoy.url("/soak")
    rss_start, _ = rss_kb(pid)
    # warm-up: the same kind of traffic on ONE key, so connections, buffers and allocator
    # arenas settle before the baseline; what the spray adds is per-key state
    warm, _ = wrk(url, str(warm_lua), 30, 50_000 // THREADS)
    rss0, hwm0 = rss_kb(pid)

    samples = []
    stop = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not stop.wait(5):
            samples.append((round(time.monotonic() - t0), rss_kb(pid)[0]))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.monotonic()
    res, text = wrk(url, str(lua), SECONDS, -(-KEYS // THREADS))
    took = time.monotonic() - t0
    stop.set()
    th.join()
    rss1, hwm1 = rss_kb(pid)
    alive = envoy.running and envoy.get("/soak", {"x-forwarded-for": "1.2.3.4, 10.255.255.254"}).status in (200, 429)
    st = {k: envoy.stat(f"apiguard.ratelimit.soak.{k}") for k in
          ("allowed", "limited", "shared_slot", "table_full", "store_failure")}
    st["cas_retry"] = envoy.stat("apiguard.ratelimit.cas_retry")
finally:
    envoy.stop()
    shutil.rmtree(work, ignore_errors=True)

delta = rss1 - rss0
lines = [
    f"apiguard key-spray soak, {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
    f"host: {os.cpu_count()} CPUs; envoy --concurrency {CONC}; wrk -t{THREADS} -c{CONNS}",
    f"limit: capacity 5, refill 1/60 s, key client_ip(trusted_hops 1), max_buckets {MAX_BUCKETS}, on_table_full share",
    f"warm-up (one key): {warm['responses']} responses",
    f"spray: {res['responses']} responses = {res['responses']} distinct keys (target {KEYS}) in {took:.1f} s"
    f" ({res['responses'] / took:.0f} req/s)",
    f"  status: 200={res['s200']} 429={res['s429']} other={res['other']}; wrk errors:"
    f" connect={res['errors_connect']} read={res['errors_read']} write={res['errors_write']}"
    f" timeout={res['errors_timeout']}",
    f"  stats: {json.dumps(st)}",
    f"envoy VmRSS: start {rss_start} kB, after warm-up {rss0} kB, after spray {rss1} kB,"
    f" delta {delta:+d} kB ({delta / 1024:+.1f} MB); VmHWM {hwm0} -> {hwm1} kB",
    f"  RSS samples during spray (s, kB): {samples}",
    f"envoy alive and answering after spray: {alive}",
    "expectation: shared data holds at most max_buckets slots (~100 B each, ~1 MB);"
    " one entry per key would be >= 100 MB at 1M keys",
]
OUT.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
ok = alive and res["other"] == 0 and st["store_failure"] == 0
sys.exit(0 if ok else 1)
PY
