# Shared by scripts/demo, scripts/test and scripts/lock: find Python >= 3.11, bootstrap uv and
# install the project's .venv from uv.lock. Sourced, not run.

# The uv release the lock is written and read with. uv comes from PyPI, so a machine without it
# gets it from there, into .tools/ (git-ignored), and never from a download script.
UV_VERSION=0.13.9

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
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

# new_venv PYTHON DIR: a plain virtualenv (Debian and Ubuntu ship venv support separately).
new_venv() {
  if ! "$1" -m venv "$2" 2>/dev/null; then
    command -v apt-get >/dev/null 2>&1 || { echo "cannot create a virtualenv with $1" >&2; return 1; }
    rm -rf "$2"
    apt_install python3-venv
    "$1" -m venv "$2"
  fi
}

# ensure_uv: export UV, the pinned uv (one already on PATH when it is that release).
ensure_uv() {
  local python
  if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
    UV=$(command -v uv)
  else
    UV=$PWD/.tools/bin/uv
    if [ ! -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
      echo "==> installing uv $UV_VERSION into .tools/"
      python=$(find_python)
      rm -rf .tools
      new_venv "$python" .tools
      .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    fi
  fi
  export UV
  # uv uses the Python found here and never downloads an interpreter of its own.
  UV_PYTHON=$(find_python)
  export UV_PYTHON UV_PYTHON_DOWNLOADS=never
}

# make_venv EXTRA...: install the project with those extras into .venv, exactly as uv.lock pins
# them (`--locked` fails when pyproject.toml and the lock disagree: run scripts/lock).
make_venv() {
  local venv=${VENV:-.venv} extra args=()
  ensure_uv
  for extra in "$@"; do args+=(--extra "$extra"); done
  UV_PROJECT_ENVIRONMENT=$venv "$UV" sync --locked --quiet "${args[@]}" ${SYNC_FLAGS:-}
  export PATH="$PWD/$venv/bin:$PATH" VIRTUAL_ENV="$PWD/$venv"
}

# make_lowest_venv EXTRA...: the lowest versions pyproject.toml allows for our direct
# dependencies (their own dependencies resolved as usual) in .venv-lowest.
make_lowest_venv() {
  local venv=.venv-lowest extras
  ensure_uv
  extras=$(IFS=,; echo "$*")
  # A fresh venv each time: an old one could keep newer versions than the lowest.
  rm -rf "$venv"
  "$UV" venv --quiet "$venv"
  # --python names the target: UV_PYTHON alone would make uv pip install into that interpreter.
  "$UV" pip install --quiet --python "$venv/bin/python" --resolution lowest-direct \
    --editable ".[$extras]"
  export PATH="$PWD/$venv/bin:$PATH" VIRTUAL_ENV="$PWD/$venv"
}
