#!/usr/bin/env bash
# Starts the demo upstream and Envoy with apiguard (envoy/envoy.yaml), then prints curl
# commands that show an allowed request, a 401 and a 403. Ctrl-C stops both.
# APIGUARD_GLOBAL=1 (`make run-global`) also starts Redis (127.0.0.1:16379) and apiguard-rls
# (127.0.0.1:18081, envoy/demo/rls.yaml) for the policy's global limit on /quota.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
ENVOY=${APIGUARD_ENVOY:-.venv/bin/envoy}
CLI=${APIGUARD_CLI:-target/cli/apiguard}

GLOBAL=${APIGUARD_GLOBAL:-}
RLS=${APIGUARD_RLS:-rls/target/debug/apiguard-rls}
PORTS="10000 9901 18080"
if [ -n "$GLOBAL" ]; then PORTS="$PORTS 16379 18081"; fi

for port in $PORTS; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is already in use (another 'make run'?); stop it first" >&2
    exit 1
  fi
done

PIDS=""
trap 'kill $PIDS 2>/dev/null || true' EXIT INT TERM
if [ -n "$GLOBAL" ]; then
  redis-server --bind 127.0.0.1 --port 16379 --save "" --appendonly no --dir .run >.run/redis.log 2>&1 &
  PIDS="$PIDS $!"
  "$RLS" --config envoy/demo/rls.yaml --listen 127.0.0.1:18081 --redis redis://127.0.0.1:16379 >.run/rls.log 2>&1 &
  RLS_PID=$!
  PIDS="$PIDS $RLS_PID"
  for _ in $(seq 1 100); do
    if grep -q '^listening' .run/rls.log 2>/dev/null; then break; fi
    if ! kill -0 $RLS_PID 2>/dev/null; then
      echo "apiguard-rls exited:" >&2; cat .run/rls.log >&2; exit 1
    fi
    sleep 0.1
  done
fi
python3 envoy/demo/upstream.py 18080 &
PIDS="$PIDS $!"
CONFIG=envoy/envoy.yaml
if [ -n "$GLOBAL" ]; then
  CONFIG=.run/envoy-global.yaml
  "${PYTHON:-.venv/bin/python}" envoy/render.py --global "$CONFIG"
fi
"$ENVOY" -c "$CONFIG" --concurrency 2 --disable-hot-restart --log-path .run/envoy.log &
ENVOY_PID=$!
PIDS="$PIDS $ENVOY_PID"

for _ in $(seq 1 100); do
  if curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1; then break; fi
  if ! kill -0 $ENVOY_PID 2>/dev/null; then
    echo "Envoy exited; last log lines:" >&2; tail -n 30 .run/envoy.log >&2; exit 1
  fi
  sleep 0.1
done

READ=$("$CLI" token --alg RS256 --scope "items:read")
# The writer has its own subject, so its POSTs do not spend the reader's rate-limit bucket
# (per-client is keyed on `sub`): the reader's loop below shows 429 after exactly 20.
WRITE=$("$CLI" token --alg ES256 --scope "items:read items:write" --sub demo-writer)
EXPIRED=$("$CLI" token --alg EdDSA --scope "items:read" --ttl -600)

if [ -n "$GLOBAL" ]; then
  cat <<MSG

  # global limit (apiguard-rls on 127.0.0.1:18081 + Redis on 16379, envoy/demo/rls.yaml):
  # 12 quick requests give 10 x 200, then 429 with Retry-After until the minute's window
  # resets; every Envoy pointed at the same service shares the count
  for i in \$(seq 12); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:10000/quota; done; echo
  curl -i http://127.0.0.1:10000/quota
MSG
fi

cat <<MSG

apiguard is running: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901), log in .run/envoy.log

  # 200: public route
  curl -i http://127.0.0.1:10000/healthz

  # 401: no token (WWW-Authenticate + problem+json)
  curl -i http://127.0.0.1:10000/items/42

  # 200: RS256 token with items:read
  curl -i -H "Authorization: Bearer $READ" http://127.0.0.1:10000/items/42

  # 403: creating needs items:write
  curl -i -X POST -H "Authorization: Bearer $READ" -H 'content-type: application/json' -d '{"name":"x"}' http://127.0.0.1:10000/items

  # 200: ES256 token with items:write
  curl -i -X POST -H "Authorization: Bearer $WRITE" -H 'content-type: application/json' -d '{"name":"x"}' http://127.0.0.1:10000/items

  # 400: mass assignment refused by the body schema (additionalProperties: false)
  curl -i -X POST -H "Authorization: Bearer $WRITE" -H 'content-type: application/json' -d '{"name":"x","admin":true}' http://127.0.0.1:10000/items

  # 200: API key instead of a JWT
  curl -i -H 'x-api-key: demo-partner-key' http://127.0.0.1:10000/items

  # 25 quick requests: 20 x 200, then 429 (RateLimit headers on every answer; the bucket
  # refills 20 a minute, Retry-After says when the next one passes)
  for i in \$(seq 25); do curl -s -o /dev/null -w '%{http_code} ' -H "Authorization: Bearer $READ" http://127.0.0.1:10000/items; done; echo

  # 401: expired EdDSA token
  curl -i -H "Authorization: Bearer $EXPIRED" http://127.0.0.1:10000/items/42

  # 403: no route allows /admin
  curl -i -H "Authorization: Bearer $WRITE" http://127.0.0.1:10000/admin

  # stats
  curl -s http://127.0.0.1:9901/stats | grep apiguard

  # more tokens: $CLI token --help

Ctrl-C to stop.
MSG
wait $ENVOY_PID
