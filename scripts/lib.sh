# Shared steps of scripts/demo.sh and scripts/test.sh. Source it; do not run it.
# Each step is idempotent: a second run finds what the first one made and moves on.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${AUTOBOT_VENV:-$repo_root/.venv}"

log() { printf '%s\n' "$*" >&2; }

# Install Debian packages for missing commands. Arguments: pairs of "command package".
# Without root or sudo, print one line saying what to install and return 1.
ensure_packages() {
  local missing=() command package
  while [ "$#" -ge 2 ]; do
    command="$1" package="$2"
    shift 2
    if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ]; then
      missing+=("$package")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  local unique
  unique="$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
  local run_as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      run_as_root=(sudo -n)
    else
      log "missing: ${unique}- install with: sudo apt-get install -y ${unique}"
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing: ${unique}- install these packages with your system's package manager"
    return 1
  fi
  log "installing ${unique}with apt-get"
  # Debian starts the packages' own services where it can; the tests never use them.
  "${run_as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  "${run_as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $unique >&2
}

# Create the virtual environment and install the package with its test extras.
ensure_venv() {
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "autobot-otel needs Python 3.11 or newer; set PYTHON=/path/to/python3.11"
    return 1
  fi
  if [ ! -x "$venv/bin/python" ]; then
    log "creating the virtual environment in $venv"
    "$python" -m venv "$venv" || {
      log "could not create a virtual environment: install python3-venv (sudo apt-get install -y python3-venv)"
      return 1
    }
  fi
  local stamp="$venv/.autobot-installed"
  if [ ! -f "$stamp" ] || [ "$repo_root/pyproject.toml" -nt "$stamp" ]; then
    log "installing autobot-otel and its test dependencies into $venv"
    local pip_log="$venv/pip-install.log"
    if ! { "$venv/bin/python" -m pip install -q --upgrade pip \
        && "$venv/bin/python" -m pip install -q -e "$repo_root[test]"; } >"$pip_log" 2>&1; then
      cat "$pip_log" >&2
      log "pip install failed; the output is above and in $pip_log"
      return 1
    fi
    touch "$stamp"
  fi
}
