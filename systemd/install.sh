#!/usr/bin/env bash
# Install or upgrade Sovereign as a systemd service. Run as root from a checkout:
#     sudo systemd/install.sh            # install, or upgrade, and (re)start
#     sudo NO_START=1 systemd/install.sh # install without starting (to edit the config first)
#
# What it does (each step is safe to repeat):
#   1. a system user and group `sovereign` with no shell and no home
#   2. a new release: a virtual environment in /opt/sovereign/releases/<time>-<commit>-<pid>
#      with this checkout installed (built here), the runbook and deploy/ (the Prometheus
#      rules and the Grafana dashboard, which Grafana's provisioning reads from
#      /opt/sovereign/current/deploy), while the running service goes on with its own
#      release untouched
#   3. /etc/sovereign/sovereign.toml from systemd/sovereign.toml, state in
#      /var/lib/sovereign/state and the control socket in /run/sovereign, only if there
#      is no config yet (an existing config is never overwritten), checked by the new
#      release
#   4. the units into /etc/systemd/system, checked with systemd-analyze verify; the
#      Telegram bot's unit is enabled only when the config's [telegram] is enabled with
#      chats and users (its token: /etc/sovereign/credentials/telegram-token, docs/runbook.md)
#   5. a backup of the state (when there is one), then stop the service (and the bot),
#      switch /opt/sovereign/current to the new release, daemon-reload, enable and start
# The switch comes after the stop: a process the supervisor restarts runs the code its
# supervisor runs, never a newer one installed under it. The three newest releases are
# kept; rolling back is pointing `current` at the one before (docs/runbook.md).
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
cd /  # nothing below may import from the checkout or wherever root stands (a planted module)
export PYTHONSAFEPATH=1
PREFIX="${SOVEREIGN_PREFIX:-/opt/sovereign}"  # the variables: for the install test only
ETC="${SOVEREIGN_ETC:-/etc/sovereign}"
UNITS="${SOVEREIGN_UNITS:-/etc/systemd/system}"
VAR="${SOVEREIGN_VAR:-/var/lib/sovereign}"
PY="${PYTHON:-python3}"
KEEP=3

[[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root (sudo)" >&2; exit 2; }
command -v systemctl >/dev/null || { echo "install.sh: systemd is required" >&2; exit 2; }

getent group sovereign >/dev/null || groupadd --system sovereign
getent passwd sovereign >/dev/null ||
    useradd --system --gid sovereign --no-create-home --home-dir "$VAR" \
            --shell /usr/sbin/nologin --comment "Sovereign trading engine" sovereign

# 2. the new release, beside the running one
commit="$(git -C "$SRC" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
RELEASE="$PREFIX/releases/$(date -u +%Y%m%dT%H%M%SZ)-$commit-$$"
install -d -m 0755 "$PREFIX/releases"
[[ ! -e $RELEASE ]] || { echo "install.sh: $RELEASE already exists" >&2; exit 1; }
trap 'rm -rf "$RELEASE"; echo "install.sh: failed; the running release is untouched" >&2' ERR
"$PY" -m venv "$RELEASE"
"$RELEASE/bin/pip" install --quiet --upgrade pip
"$RELEASE/bin/pip" install --quiet "$SRC"
install -d -m 0755 "$RELEASE/docs"
install -m 0644 "$SRC/docs/runbook.md" "$RELEASE/docs/runbook.md"
# deploy/ (Prometheus, Grafana) and systemd/mt5/ (an MT5 account's units: docs/runbook.md)
(cd "$SRC" && find deploy systemd/mt5 -type f) | while read -r file; do
    install -D -m 0644 "$SRC/$file" "$RELEASE/$file"
done

# 3. the config, checked by the release that will run it
install -d -m 0750 -g sovereign "$ETC"
if [[ ! -f $ETC/sovereign.toml ]]; then
    sed -e "s|^state_dir = \"state\" |state_dir = \"$VAR/state\" |" \
        -e 's|^runtime_dir = "" |runtime_dir = "/run/sovereign" |' \
        "$SRC/systemd/sovereign.toml" > "$ETC/sovereign.toml"
    chgrp sovereign "$ETC/sovereign.toml"
    chmod 0640 "$ETC/sovereign.toml"
    echo "install.sh: wrote $ETC/sovereign.toml (edit it, then: systemctl restart sovereign)"
fi
"$RELEASE/bin/sovereign" config check "$ETC/sovereign.toml"
install -d -m 0700 "$ETC/credentials"  # root's: systemd hands each file to its unit alone

# whether the config turns the bot on ([telegram] enabled, with chats and users to talk to)
telegram=""
if "$RELEASE/bin/python" - "$ETC/sovereign.toml" <<'PY'
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the package depends on tomli there
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    bot = tomllib.load(f).get("telegram", {})
sys.exit(0 if bot.get("enabled") is True and bot.get("chats") and bot.get("users") else 1)
PY
then
    telegram=1
    [[ -f $ETC/credentials/telegram-token ]] ||
        echo "install.sh: [telegram] is configured but $ETC/credentials/telegram-token is missing:" \
             "the bot will not start until it is there (docs/runbook.md)" >&2
fi

# 4. the units
units=(sovereign.service sovereign-backup.service sovereign-backup.timer sovereign-metrics.socket
       sovereign-metrics.service sovereign-telegram.service)
for unit in "${units[@]}"; do
    install -m 0644 "$SRC/systemd/$unit" "$UNITS/$unit"
done
systemd-analyze verify "${units[@]/#/$UNITS/}"
trap - ERR

# 5. back up, stop, switch, start
if [[ -f $VAR/state/data.mdb ]]; then
    echo "install.sh: backing up the state before the upgrade"
    runuser -u sovereign -- "$RELEASE/bin/sovereign" state backup --config "$ETC/sovereign.toml" \
        --rotate 14 "$VAR/backups"
fi
running=""
if systemctl is-active --quiet sovereign-telegram.service; then
    systemctl stop sovereign-telegram.service  # it runs the old release too
fi
if systemctl is-active --quiet sovereign.service; then
    running=1
    echo "install.sh: stopping the service (it drains and flushes its state)"
    systemctl stop sovereign.service
fi
ln -sfn "$RELEASE" "$PREFIX/.current.new"
mv -T "$PREFIX/.current.new" "$PREFIX/current"  # a rename: `current` is never missing
echo "install.sh: $PREFIX/current -> $RELEASE"
systemctl daemon-reload
systemctl enable sovereign.service sovereign-backup.timer sovereign-metrics.socket
if [[ -n $telegram ]]; then
    systemctl enable sovereign-telegram.service
elif systemctl is-enabled --quiet sovereign-telegram.service; then
    echo "install.sh: the config does not enable [telegram]: the bot's unit is disabled"
    systemctl disable sovereign-telegram.service
fi
if [[ -z ${NO_START:-} || -n $running ]]; then
    systemctl start sovereign.service
    systemctl start sovereign-backup.timer
    systemctl restart sovereign-metrics.socket  # a changed port takes effect
    [[ -z $telegram ]] || systemctl start sovereign-telegram.service
    runuser -u sovereign -- "$PREFIX/current/bin/sovereign" status --config "$ETC/sovereign.toml" || true
fi

# the newest releases stay for a rollback; never the current one
ls -1d "$PREFIX"/releases/*/ 2>/dev/null | sort | head -n -"$KEEP" | while read -r old; do
    [[ $(readlink -f "$old") == $(readlink -f "$PREFIX/current") ]] || rm -rf "$old"
done
runuser -u sovereign -- "$PREFIX/current/bin/sovereign" doctor --config "$ETC/sovereign.toml" || true
