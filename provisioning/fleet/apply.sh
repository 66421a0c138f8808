#!/bin/sh
# Runs as root on one Pi, from the directory provisioning/provision unpacked there:
#   plan    INSTALL, RESTART (0/1), FILES ("name:mode:owner:group ..."), PACKAGE_FILE/VERSION
#   pkg/    the .deb, when it is to be installed
#   files/  the files of /etc/capture-agent/ that differ
# Reports with key=value lines on stdout; details of a failure on stderr. Exit codes:
# 10 apt-get failed, 11 the configuration does not validate (the previous files are back),
# 12 the service did not start.
set -eu
d=$1
# shellcheck source=/dev/null
. "$d/plan"
CONFIG_DIR=/etc/capture-agent

if [ "$INSTALL" = 1 ]; then
  chmod 0755 "$d/pkg"
  # Waits for a running apt (unattended-upgrades) instead of failing on its lock.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    --allow-downgrades -o DPkg::Lock::Timeout=300 "$d/pkg/$PACKAGE_FILE" >"$d/apt.log" 2>&1; then
    tail -n 20 "$d/apt.log" >&2
    echo "error=apt-get install of $PACKAGE_VERSION failed"
    exit 10
  fi
  echo "installed=$PACKAGE_VERSION"
fi

# The new files replace the old ones by rename; the old ones wait in $d until the new
# configuration validated.
for entry in $FILES; do
  name=${entry%%:*}; rest=${entry#*:}
  mode=${rest%%:*}; rest=${rest#*:}
  owner=${rest%%:*}; group=${rest#*:}
  target=$CONFIG_DIR/$name
  if [ -e "$target" ]; then cp -p "$target" "$d/prev.$name"; fi
  install -m "$mode" -o "$owner" -g "$group" "$d/files/$name" "$target.new"
  mv -f "$target.new" "$target"
  echo "wrote=$name"
done

if [ -n "$FILES" ]; then
  if ! out=$(runuser -u capture-agent -- /usr/bin/capture-agent validate \
    --config "$CONFIG_DIR/agent.toml" 2>&1); then
    for entry in $FILES; do
      name=${entry%%:*}
      if [ -e "$d/prev.$name" ]; then
        cp -p "$d/prev.$name" "$CONFIG_DIR/$name"
      else
        rm -f "$CONFIG_DIR/$name"
      fi
    done
    echo "$out" >&2
    echo "error=the new configuration does not validate; the previous files are back"
    exit 11
  fi
  echo "validated=yes"
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --quiet capture-agent.service
  if [ "$RESTART" = 1 ] || ! systemctl is-active --quiet capture-agent.service; then
    # Type=notify: this returns once the agent sent READY=1, or failed.
    if ! systemctl restart capture-agent.service; then
      systemctl status --no-pager --lines=20 capture-agent.service >&2 || true
      echo "error=capture-agent.service did not start"
      exit 12
    fi
    echo "restarted=yes"
  fi
else
  echo "systemd=no"
fi
