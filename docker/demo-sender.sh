#!/bin/sh
# One-shot demo: a message out through the outbound listener, then bounces into the inbound listener.
# Runs in the compose file's "sender" service (PROXY_HOST=proxy, sharing the proxy's keys volume) and in
# test/ops/demo.test.ts (PROXY_HOST=127.0.0.1, OUT_PORT/IN_PORT and BATV_PROXY_KEYS__DIR set), so the
# scenario is tested without a container engine.
set -eu
HOST="${PROXY_HOST:-proxy}"
OUT="${HOST}:${OUT_PORT:-2525}"
IN="${HOST}:${IN_PORT:-2526}"
# Not a BATV_PROXY_* name: the CLI reads those as settings.
CLI="${DEMO_CLI:-node /app/bin/batv-proxy.js}"

echo "1. alice@example.com sends a message out: the proxy signs the envelope sender"
$CLI send-test --server "$OUT" --from alice@example.com --to bob@example.net --subject "Hello from the demo"

TAG=$($CLI sign alice@example.com)
echo "2. a real bounce comes back to the signed address $TAG: accepted and unwrapped"
$CLI send-test --server "$IN" --from "" --to "$TAG" --subject "Undelivered Mail Returned to Sender"

echo "3. a forged bounce to the bare address (backscatter) is refused"
if $CLI send-test --server "$IN" --from "" --to alice@example.com --subject "Undelivered Mail Returned to Sender"; then
  echo "unexpected: the forged bounce was accepted" >&2
  exit 1
fi
echo "done: Mailpit shows the signed envelope sender and the unwrapped bounce with its X-BATV-Proxy verdict"
