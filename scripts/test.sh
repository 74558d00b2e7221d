#!/usr/bin/env bash
# Run the autobot-otel test suite. Arguments go to pytest.
#
# It creates .venv, installs redis-server with apt-get when it is missing, and, under CI
# (CI=true) or with AUTOBOT_INSTALL_TOOLS=1, also Prometheus, promtool, Alertmanager and
# amtool, and builds the OpenTelemetry Collector with Go. Elsewhere a test whose tool is
# missing is skipped with the reason; under CI it fails instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_packages redis-server redis-server || true
if [ "${CI:-}" = "true" ] || [ "${AUTOBOT_INSTALL_TOOLS:-}" = "1" ]; then
  ensure_packages prometheus prometheus promtool prometheus \
    prometheus-alertmanager prometheus-alertmanager amtool prometheus-alertmanager
fi
ensure_venv

if [ -z "${AUTOBOT_COLLECTOR_BIN:-}" ] && command -v go >/dev/null 2>&1 \
  && { [ "${CI:-}" = "true" ] || [ "${AUTOBOT_INSTALL_TOOLS:-}" = "1" ]; }; then
  log "building the OpenTelemetry Collector (cached after the first build)"
  AUTOBOT_COLLECTOR_BIN="$(bash "$repo_root/collector/build.sh" | tail -n 1)"
  export AUTOBOT_COLLECTOR_BIN
fi

cd "$repo_root"
exec "$venv/bin/python" -m pytest "$@"
