#!/usr/bin/env bash
# Install (or upgrade) wapool on a Debian/Ubuntu server, from this checkout. Run as root.
#
#   sudo deploy/install.sh
#
# What it changes (nothing else):
#   user and group  wapool (system account, no login shell, home /var/lib/wapool)
#   /opt/wapool/venv                 virtualenv with wapool and its dependencies (replaced)
#   /opt/wapool/README.md            this README
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

if [[ -z "$root" ]] && ! id wapool >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/wapool --shell /usr/sbin/nologin wapool
    say "created system user wapool"
fi

install -d -m 0755 "$root/opt/wapool"
"$python" -m venv --clear "$root/opt/wapool/venv"
if [[ -z "${WAPOOL_INSTALL_SKIP_PIP:-}" ]]; then
    "$root/opt/wapool/venv/bin/pip" install --quiet --upgrade pip
    "$root/opt/wapool/venv/bin/pip" install --quiet "$src"
fi
install -m 0644 "$src/README.md" "$root/opt/wapool/README.md"
say "virtualenv in $root/opt/wapool/venv"

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
