#!/usr/bin/env bash
# Install or upgrade Sovereign as a systemd service. Run as root from a checkout:
#     sudo systemd/install.sh            # install, or upgrade in place, and (re)start
#     sudo NO_START=1 systemd/install.sh # install without starting (to edit the config first)
#
# What it does (each step is safe to repeat):
#   1. a system user and group `sovereign` with no shell and no home
#   2. a virtual environment in /opt/sovereign with this checkout installed (built here)
#   3. /etc/sovereign/sovereign.toml from systemd/sovereign.toml, state in
#      /var/lib/sovereign/state and the control socket in /run/sovereign, only if there
#      is no config yet (an existing config is never overwritten)
#   4. the units into /etc/systemd/system, checked with systemd-analyze verify
#   5. daemon-reload, enable the service and the backup timer, and (re)start
# An upgrade takes a backup first (when there is state) and checks the config before the
# restart; see docs/runbook.md.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
cd /  # nothing below may import from the checkout or wherever root stands (a planted module)
export PYTHONSAFEPATH=1
PREFIX=/opt/sovereign
ETC=/etc/sovereign
UNITS=/etc/systemd/system
PY="${PYTHON:-python3}"

[[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root (sudo)" >&2; exit 2; }
command -v systemctl >/dev/null || { echo "install.sh: systemd is required" >&2; exit 2; }

getent group sovereign >/dev/null || groupadd --system sovereign
getent passwd sovereign >/dev/null ||
    useradd --system --gid sovereign --no-create-home --home-dir /var/lib/sovereign \
            --shell /usr/sbin/nologin --comment "Sovereign trading engine" sovereign

if [[ -f /var/lib/sovereign/state/data.mdb ]]; then
    echo "install.sh: backing up the state before the upgrade"
    runuser -u sovereign -- "$PREFIX/bin/sovereign" state backup --config "$ETC/sovereign.toml" \
        --rotate 14 /var/lib/sovereign/backups
fi

[[ -x $PREFIX/bin/python ]] || "$PY" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --upgrade pip
"$PREFIX/bin/pip" install --quiet "$SRC"
install -d -m 0755 "$PREFIX/docs"
install -m 0644 "$SRC/docs/runbook.md" "$PREFIX/docs/runbook.md"

install -d -m 0750 -g sovereign "$ETC"
if [[ ! -f $ETC/sovereign.toml ]]; then
    sed -e 's|^state_dir = "state" |state_dir = "/var/lib/sovereign/state" |' \
        -e 's|^runtime_dir = "" |runtime_dir = "/run/sovereign" |' \
        "$SRC/systemd/sovereign.toml" > "$ETC/sovereign.toml"
    chgrp sovereign "$ETC/sovereign.toml"
    chmod 0640 "$ETC/sovereign.toml"
    echo "install.sh: wrote $ETC/sovereign.toml (edit it, then: systemctl restart sovereign)"
fi
"$PREFIX/bin/sovereign" config check "$ETC/sovereign.toml"

for unit in sovereign.service sovereign-backup.service sovereign-backup.timer; do
    install -m 0644 "$SRC/systemd/$unit" "$UNITS/$unit"
done
systemd-analyze verify "$UNITS/sovereign.service" "$UNITS/sovereign-backup.service" \
    "$UNITS/sovereign-backup.timer"
systemctl daemon-reload
systemctl enable sovereign.service sovereign-backup.timer
if [[ -z ${NO_START:-} ]]; then
    systemctl restart sovereign.service
    systemctl start sovereign-backup.timer
    runuser -u sovereign -- "$PREFIX/bin/sovereign" status --config "$ETC/sovereign.toml" || true
fi
runuser -u sovereign -- "$PREFIX/bin/sovereign" doctor --config "$ETC/sovereign.toml" || true
