# Sourced by bin/demo, bin/test and .ci/run: a virtualenv with this checkout installed.
#
# ONCEONLY_VENV picks the virtualenv (default: .venv in the checkout); PYTHON the
# interpreter that creates it (default: python3, 3.11 or newer). The install is redone
# whenever pyproject.toml or example_project/requirements.txt changes.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ONCEONLY_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

# mysqlclient (in the test dependencies) compiles against the MariaDB/MySQL client.
ensure_build_deps() {
    if { command -v mariadb_config || command -v mysql_config; } >/dev/null \
        && command -v pkg-config >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "Installing libmariadb-dev and pkg-config (to build mysqlclient)..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq libmariadb-dev pkg-config >/dev/null
        return 0
    fi
    echo "error: building mysqlclient needs the MariaDB/MySQL client headers and pkg-config;" \
        "install them first (Debian/Ubuntu: apt-get install libmariadb-dev pkg-config;" \
        "macOS: brew install mysql-client pkg-config)" >&2
    return 1
}

_pyproject_hash() {
    "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(p, "rb").read() for p in sys.argv[1:])).hexdigest())' \
        "$ROOT/pyproject.toml" "$ROOT/example_project/requirements.txt"
}

_install() (
    set -e
    pip=("$VENV/bin/python" -m pip install --disable-pip-version-check)
    # dependency groups (--group) need pip 25.1 or newer
    "${pip[@]}" --upgrade pip
    cd "$ROOT"
    # The example project's demo (aiosmtpd, tqdm) runs in both: its test is in the suite.
    if [ "$1" = dev ]; then
        "${pip[@]}" -e ".[celery,redis,drf,client,openapi]" --group dev -r example_project/requirements.txt
    else
        "${pip[@]}" -e ".[celery,redis,drf]" -r example_project/requirements.txt
    fi
)

# ensure_venv demo: the package with its extras and the example project's requirements;
# ensure_venv dev: the same and the dev group.
ensure_venv() {
    local what="$1" want
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: django-onceonly needs Python 3.11 or newer; set PYTHON=/path/to/python3.x" >&2
        return 1
    fi
    want="$(_pyproject_hash)"
    if [ "$(cat "$VENV/.onceonly-dev" 2>/dev/null)" = "$want" ] \
        || [ "$(cat "$VENV/.onceonly-$what" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "Creating the virtualenv $VENV ..."
        "$PYTHON" -m venv "$VENV"
    fi
    if [ "$what" = dev ]; then
        ensure_build_deps || return 1
    fi
    echo "Installing django-onceonly ($what) into $VENV (log: $VENV/install.log) ..."
    if ! _install "$what" >"$VENV/install.log" 2>&1; then
        cat "$VENV/install.log" >&2
        echo "error: installing into $VENV failed (output above)" >&2
        return 1
    fi
    echo "$want" >"$VENV/.onceonly-$what"
}
