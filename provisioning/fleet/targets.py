"""The Prometheus target list of an inventory: one scrape target per Pi, for `file_sd_configs`.

Written to `[monitoring] targets_dir` as `<inventory file name without .csv>.json`, so that
each line's inventory has its own file and a Prometheus `file_sd_configs` glob such as
`targets/*.json` picks them all up. Each target is the Pi's address from the inventory's host
column (without the SSH user and port) and the port of `[metrics] listen`; its labels are
`device`, `station` and `env`, which the alert rules and dashboards in deploy/monitoring/
group by. The whole inventory is written whatever `--limit` says; the same inventory gives the
same bytes, so a second run changes nothing. Prometheus re-reads the file on its own.

Format (https://prometheus.io file_sd, JSON):
    [{"targets": ["10.20.0.11:9464"], "labels": {"device": "pi-01", "station": "pack-01", "env": "prod"}}]
"""

import json
import os
from pathlib import Path

DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"


def listen_port(listen):
    """The port of `[metrics] listen` (`host:port`, `[v6]:port`)."""
    host, sep, port = str(listen).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def loopback(host):
    return host in ("localhost", "::1") or host.startswith("127.")


def path(fleet, inventory):
    return fleet.targets_dir / f"{Path(inventory).stem}.json"


def render(fleet, devices):
    """The target list's bytes: one entry per device, in inventory order."""
    _, port = listen_port(fleet.metrics.get("listen", DEFAULT_METRICS_LISTEN))
    entries = []
    for device in devices:
        host = f"[{device.ssh_host}]" if ":" in device.ssh_host else device.ssh_host
        entries.append({
            "targets": [f"{host}:{port}"],
            "labels": {"device": device.device, "station": device.station, "env": device.env},
        })
    return (json.dumps(entries, indent=2) + "\n").encode()


def write(file, content):
    """Replaces `file` with `content` atomically: Prometheus never reads half a file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_bytes(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, file)
