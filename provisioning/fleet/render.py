"""What one Pi should hold in /etc/capture-agent/: its agent.toml and its secret files.

The agent.toml is rendered from the inventory row (device, station, env, cameras) and the
fleet configuration (broker, store, and the [agent], [disk], [metrics] and [camera] sections,
copied as they are so that every agent setting can be set fleet-wide). Nothing in it is
secret; secrets go to files of their own, named by the config, owned by the agent's user
with mode 0600 (the agent refuses secret files that others can read). The rendering has no
timestamp: the same inputs give the same bytes, which is how a second run finds nothing to do.
"""

import hashlib
import json
from dataclasses import dataclass

from .config import SPOOL_DIR

CONFIG_DIR = "/etc/capture-agent"
AGENT_USER = "capture-agent"


@dataclass
class RemoteFile:
    """A file to put on the Pi: its content, mode and owner. `secret` ones are never shown."""

    name: str
    content: bytes
    mode: int
    owner: str
    group: str
    secret: bool

    @property
    def path(self):
        return f"{CONFIG_DIR}/{self.name}"

    @property
    def sha256(self):
        return hashlib.sha256(self.content).hexdigest()


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string (ASCII, \uXXXX escapes) is a valid TOML basic string.
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} into agent.toml")


def toml_table(name, values, array=False):
    header = f"[[{name}]]" if array else f"[{name}]"
    return "\n".join([header, *(f"{k} = {toml_value(v)}" for k, v in values.items())]) + "\n"


def device_files(fleet, device):
    """Every file /etc/capture-agent/ should hold for `device`, agent.toml first."""
    env = fleet.envs[device.env]
    broker = env.broker
    credentials_dir = fleet.state_dir / "credentials"
    mqtt = {
        "host": broker.host,
        "port": broker.port,
        "tls": broker.tls,
    }
    files = []
    if broker.ca_file is not None:
        mqtt["ca_file"] = f"{CONFIG_DIR}/mqtt-ca.pem"
        files.append(RemoteFile("mqtt-ca.pem", broker.ca_file.read_bytes(), 0o644, "root",
                                "root", secret=False))
    mqtt.update({
        "username": device.device,
        "password_file": f"{CONFIG_DIR}/mqtt-password",
        "keep_alive": broker.keep_alive,
    })
    store = dict(env.store)
    store["access_key_id_file"] = f"{CONFIG_DIR}/obs-access-key-id"
    store["secret_access_key_file"] = f"{CONFIG_DIR}/obs-secret-access-key"

    agent = {"device": device.device, "station": device.station, "env": device.env,
             "spool_dir": SPOOL_DIR, **fleet.agent}
    parts = [
        f"# capture-agent configuration for {device.device} (station {device.station}, "
        f"env {device.env}).\n"
        "# Written by provisioning/provision from the inventory and the fleet configuration;\n"
        "# the next run replaces local changes. Check it: capture-agent validate --config "
        f"{CONFIG_DIR}/agent.toml\n",
        toml_table("agent", agent),
        toml_table("mqtt", mqtt),
        toml_table("store", store),
    ]
    if fleet.disk:
        parts.append(toml_table("disk", fleet.disk))
    if fleet.metrics:
        parts.append(toml_table("metrics", fleet.metrics))
    for name, source in device.cameras:
        parts.append(toml_table("camera", {"name": name, "source": source,
                                           **fleet.camera_defaults}, array=True))
    config = "\n".join(parts).encode()

    password = (credentials_dir / device.device).read_bytes() \
        if (credentials_dir / device.device).exists() else None
    files.insert(0, RemoteFile("agent.toml", config, 0o640, "root", AGENT_USER, secret=False))
    if password is not None:
        files.append(RemoteFile("mqtt-password", password, 0o600, AGENT_USER, AGENT_USER,
                                secret=True))
    files.append(RemoteFile("obs-access-key-id", env.access_key_id_file.read_bytes(), 0o600,
                            AGENT_USER, AGENT_USER, secret=True))
    files.append(RemoteFile("obs-secret-access-key", env.secret_access_key_file.read_bytes(),
                            0o600, AGENT_USER, AGENT_USER, secret=True))
    return files
