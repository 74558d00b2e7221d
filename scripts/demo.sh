#!/usr/bin/env bash
# Run the autobot-otel demo: an instrumented FastAPI service and a load driver against
# Redis. Arguments go to `autobot-otel demo` (try --help). It creates .venv and installs
# redis-server with apt-get when it is missing and no --redis-url is given.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ " $* " != *" --redis-url"* && -z "${REDIS_URL:-}" ]]; then
  ensure_packages redis-server redis-server
fi
ensure_venv
exec "$venv/bin/autobot-otel" demo "$@"
