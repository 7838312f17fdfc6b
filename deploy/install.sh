#!/usr/bin/env bash
# Install (or upgrade) wapool on a Debian/Ubuntu server, from this checkout. Run as root.
#
#   sudo deploy/install.sh
#
#   sudo deploy/install.sh --rollback    # point /opt/wapool/venv back at the previous release
#
# What it changes (nothing else):
#   user and group  wapool (system account, no login shell, home /var/lib/wapool)
#   /opt/wapool/releases/<UTC time>/venv  a new virtualenv with wapool and its dependencies at the
#                                    versions and hashes of deploy/requirements.lock; the
#                                    three newest releases are kept, older ones deleted
#   /opt/wapool/venv                 symlink to the new release's venv, switched atomically once
#                                    the release is complete (a running daemon is not disturbed)
#   /opt/wapool/README.md, docs/     the README and docs/ pages it links to
#   /etc/wapool/wapool.env           from .env.example, only if absent (0640 root:wapool)
#   /etc/systemd/system/wapool.service  the unit (replaced), then daemon-reload + enable
#   /var/lib/wapool                  state directory (0700 wapool:wapool), created if absent
#
# WAPOOL_INSTALL_ROOT=/some/dir installs under that directory instead of / and skips the user,
# chown and systemctl steps (used by the tests); WAPOOL_INSTALL_SKIP_PIP=1 skips pip.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
root=${WAPOOL_INSTALL_ROOT:-}
python=${PYTHON:-python3}
say() { printf 'install: %s\n' "$*"; }

if [[ -z "$root" && $EUID -ne 0 ]]; then
    echo "install: run as root (sudo deploy/install.sh)" >&2
    exit 1
fi

opt="$root/opt/wapool"

# Releases whose build finished, oldest first.
releases() {
    [[ -d "$opt/releases" ]] || return 0
    find "$opt/releases" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' \
        | xargs -r -n1 basename | sort
}

# Points $opt/venv at releases/$1/venv in one rename (never a moment without a venv).
switch_to() {
    ln -sfn "releases/$1/venv" "$opt/venv.switch"
    mv -T "$opt/venv.switch" "$opt/venv"
}

if [[ "${1:-}" == "--rollback" ]]; then
    current=$(basename "$(dirname "$(readlink "$opt/venv")")")
    previous=$(releases | awk -v cur="$current" '$0 < cur' | tail -n 1)
    if [[ -z "$previous" ]]; then
        echo "install: no release older than $current to roll back to" >&2
        exit 1
    fi
    switch_to "$previous"
    say "rolled back $opt/venv from $current to $previous; now: systemctl restart wapool"
    exit 0
fi

if [[ -z "$root" ]] && ! id wapool >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/wapool --shell /usr/sbin/nologin wapool
    say "created system user wapool"
fi

# Each install builds a complete new release beside the running one, then switches to it.
# (A virtualenv cannot be moved: its scripts name its own path, hence one directory per release.)
release=$(date -u +%Y%m%dT%H%M%S.%NZ)  # sorts by time; never reused
install -d -m 0755 "$opt" "$opt/releases"
for dir in "$opt"/releases/*/; do  # builds that failed half-way (never linked)
    if [[ -d "$dir" && ! -e "$dir.complete" ]]; then
        rm -rf "$dir"
        say "removed the unfinished release $dir"
    fi
done
if [[ -d "$opt/venv" && ! -L "$opt/venv" ]]; then  # the layout before releases existed
    mv -T "$opt/venv" "$opt/venv.replaced-$release"
    say "moved the old $opt/venv aside to $opt/venv.replaced-$release (delete it when done)"
fi
venv="$opt/releases/$release/venv"
"$python" -m venv "$venv"
if [[ -z "${WAPOOL_INSTALL_SKIP_PIP:-}" ]]; then
    # Exactly the files in the lock (make lock): the versions the tests ran against, on every
    # server, and a file that differs from the one locked stops the install. pip refuses a
    # dependency missing from the lock, and the lock pins pip and setuptools too.
    "$venv/bin/pip" install --quiet --require-hashes -r "$src/deploy/requirements.lock"
    # wapool itself, built with the locked setuptools; its dependencies are all in place.
    "$venv/bin/pip" install --quiet --no-deps --no-build-isolation "$src"
    "$venv/bin/pip" check  # the lock satisfies pyproject.toml's ranges
fi
touch "$opt/releases/$release/.complete"
switch_to "$release"
releases | head -n -3 | while read -r old; do rm -rf "${opt:?}/releases/$old"; done
install -m 0644 "$src/README.md" "$opt/README.md"
rm -rf "$opt/docs"  # this release's pages only
install -d -m 0755 "$opt/docs"
install -m 0644 "$src"/docs/*.md "$opt/docs/"
say "virtualenv in $opt/releases/$release/venv, linked from $opt/venv"

install -d -m 0750 "$root/etc/wapool"
if [[ -e "$root/etc/wapool/wapool.env" ]]; then
    say "kept existing $root/etc/wapool/wapool.env"
else
    install -m 0640 "$src/.env.example" "$root/etc/wapool/wapool.env"
    say "wrote $root/etc/wapool/wapool.env from .env.example: set WAPOOL_DATABASE_URL there"
fi

install -d -m 0755 "$root/etc/systemd/system"
install -m 0644 "$src/systemd/wapool.service" "$root/etc/systemd/system/wapool.service"
install -d -m 0700 "$root/var/lib/wapool"

if [[ -z "$root" ]]; then
    chown root:wapool /etc/wapool /etc/wapool/wapool.env
    chown wapool:wapool /var/lib/wapool
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
        systemctl enable wapool.service
        say "enabled wapool.service (start it with: systemctl start wapool)"
    else
        say "systemd is not running here: enable wapool.service yourself"
    fi
fi
say "done"
