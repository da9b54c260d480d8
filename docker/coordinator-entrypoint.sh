#!/bin/sh
# The coordinator service: the Flower SuperLink with TLS and SuperNode authentication,
# the operator's partner registry, and the model registry's schema in FEDCRM_REGISTRY_URL
# (migrated before the service reports ready). Every partner public key mounted in
# /etc/fedcrm/partner-keys/NAME.pub is registered once (`fedcrm coordinator partners add`,
# i.e. Flower's `flwr supernode register`); a key not mounted there is refused.
# Runs are started by the operator in this container:
#   docker-compose exec coordinator fedcrm coordinator run --superlink 127.0.0.1:9093 \
#     --root-certificates /run/secrets/ca.pem --partners 3 --task /etc/fedcrm/tasks/telco_churn.yaml
set -eu
host="${FEDCRM_SUPERLINK_HOST:-0.0.0.0}"
port="${FEDCRM_SUPERLINK_PORT:-9093}"
state=/var/lib/fedcrm
ready="$state/ready"
rm -f "$ready"
mkdir -p "$state/superlink" "$state/runs"

# The SuperLink keeps its state in memory: on a restart it registers the keys of partners.json again.
fedcrm coordinator superlink --state-dir "$state/superlink" --host "$host" --port "$port" --certs /run/secrets \
  --partners "$state/partners.json" &
superlink=$!
# init: true delivers SIGTERM to this shell; pass it on so the SuperLink stops its own processes.
trap 'kill -TERM "$superlink" 2>/dev/null; wait "$superlink"; exit 0' TERM INT

python3 /usr/local/lib/fedcrm/healthcheck.py port 127.0.0.1 "$port" --wait 120
if [ -n "${FEDCRM_REGISTRY_URL:-}" ]; then
  # The registry database (Postgres in compose): reachable and its schema migrated before we say ready.
  python3 -c 'from pathlib import Path; from fedcrm.coordinator.registry_db import open_registry, registry_url
open_registry(registry_url(None, Path("/var/lib/fedcrm/runs"))).dispose()'
  echo "registry ready: ${FEDCRM_REGISTRY_URL}"
fi
for key in /etc/fedcrm/partner-keys/*.pub; do
  [ -e "$key" ] || continue
  name="$(basename "$key" .pub)"
  if python3 /usr/local/lib/fedcrm/healthcheck.py registered "$state/partners.json" "$name"; then
    echo "partner $name already registered"
    continue
  fi
  fedcrm coordinator partners add "$name" "$key" --superlink "127.0.0.1:$port" \
    --root-certificates /run/secrets/ca.pem --registry "$state/partners.json"
done
touch "$ready"
echo "coordinator ready: SuperLink $host:$port (TLS, SuperNode authentication on)"
wait "$superlink"
