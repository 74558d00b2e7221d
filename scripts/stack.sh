#!/usr/bin/env bash
# Run the autobot-otel observability stack locally, without Docker: Redis, the
# OpenTelemetry Collector, Prometheus, Alertmanager and the demo service, all on
# 127.0.0.1. Arguments go to scripts/stack.py (try --help); Ctrl-C stops everything.
#
# It creates .venv, installs redis-server, Prometheus and Alertmanager with apt-get when
# they are missing, and builds the collector with Go on the first run (cached after).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_packages redis-server redis-server prometheus prometheus \
  prometheus-alertmanager prometheus-alertmanager
ensure_venv

# collector/build.sh needs Go on PATH; /usr/local/go is where the Go installer puts it.
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

cd "$repo_root"
exec "$venv/bin/python" "$repo_root/scripts/stack.py" "$@"
