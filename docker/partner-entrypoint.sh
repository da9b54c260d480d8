#!/bin/sh
# A partner service: this partner's SuperNode and its own fedcrm client, over TLS with its
# node key. /data holds the partner's export, partner.toml, consent ledger and work
# directory; its keys and the deployment CA are compose secrets under /run/secrets.
set -eu
exec fedcrm client join --config "${FEDCRM_PARTNER_CONFIG:-/data/partner.toml}" \
  --superlink "${FEDCRM_SUPERLINK:-coordinator:9093}" \
  --root-certificates /run/secrets/ca.pem \
  --port "${FEDCRM_RUNTIME_PORT:-9094}"
