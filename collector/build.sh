#!/usr/bin/env bash
# Build the autobot-otel collector from collector/builder-config.yaml with the OpenTelemetry
# Collector Builder (ocb) and print the binary's absolute path as the last line of stdout.
#
# The binary is cached under ${AUTOBOT_CACHE_DIR:-$HOME/.cache/autobot-otel}/collector/<sha256
# of the manifest>/, so a changed manifest builds anew and an unchanged one returns at once.
# Build logs go to stderr. A build needs Go on PATH and the Go module proxy; a cache hit
# needs neither.
set -euo pipefail

# Keep in step with the core release pinned in builder-config.yaml.
OCB_VERSION="v0.165.0"
OCB_MODULE="go.opentelemetry.io/collector/cmd/builder"

collector_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="${collector_dir}/builder-config.yaml"
binary_name="otelcol-autobot"

log() {
    echo "build.sh: $*" >&2
}

manifest_hash="$(sha256sum "${manifest}" | cut -d' ' -f1)"
cache_root="${AUTOBOT_CACHE_DIR:-${HOME}/.cache/autobot-otel}"
cache_dir="${cache_root}/collector/${manifest_hash}"
binary="${cache_dir}/${binary_name}"

if [[ -x "${binary}" ]]; then
    log "using cached collector for manifest sha256 ${manifest_hash}"
    echo "${binary}"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    log "go is not on PATH and no cached binary exists at ${binary}: install Go" \
        "(https://go.dev/doc/install) or add its bin directory, e.g. /usr/local/go/bin, to PATH"
    exit 127
fi

log "building collector for manifest sha256 ${manifest_hash} (no cached binary at ${binary})"

# Install ocb into a private bin directory so that a different ocb on PATH or in GOBIN
# cannot build this manifest with the wrong release.
tools_dir="${cache_root}/tools/ocb-${OCB_VERSION}"
ocb="${tools_dir}/builder"
if [[ ! -x "${ocb}" ]]; then
    log "installing ${OCB_MODULE}@${OCB_VERSION} into ${tools_dir}"
    GOBIN="${tools_dir}" go install "${OCB_MODULE}@${OCB_VERSION}" >&2
fi

work_dir="$(mktemp -d "${TMPDIR:-/tmp}/autobot-collector-build.XXXXXX")"
trap 'rm -rf "${work_dir}"' EXIT

# ocb resolves dist.output_path against its working directory.
(cd "${work_dir}" && "${ocb}" --config "${manifest}") >&2

# Publish the binary atomically, so that a concurrent run never reads a half-written file.
mkdir -p "${cache_dir}"
staged="$(mktemp "${cache_dir}/.${binary_name}.XXXXXX")"
cp "${work_dir}/dist/${binary_name}" "${staged}"
chmod 0755 "${staged}"
mv -f "${staged}" "${binary}"

log "built ${binary}"
echo "${binary}"
