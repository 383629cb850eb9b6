# Shared by scripts/demo and scripts/test: find Python >= 3.11 and make the project's .venv.
# Sourced, not run.

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "streaming_mw needs Python 3.11 or newer on PATH (or PYTHON=/path/to/python3.11)." >&2
  return 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# make_venv EXTRAS: create .venv (once) and install the project with those extras into it.
make_venv() {
  local python venv=${VENV:-.venv}
  python=$(find_python)
  if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv" 2>/dev/null; then
      # Debian and Ubuntu ship venv support in a separate package.
      command -v apt-get >/dev/null 2>&1 || { echo "cannot create a virtualenv with $python" >&2; return 1; }
      rm -rf "$venv"
      apt_install python3-venv
      "$python" -m venv "$venv"
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet --editable ".[$1]"
  export PATH="$PWD/$venv/bin:$PATH"
}
