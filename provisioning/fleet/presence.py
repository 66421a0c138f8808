"""Waiting for a station's retained status to say `online`.

The agent publishes `{"v":1,"state":"online","device":...,"version":...,"at":...}` retained
to `cap/{env}/station/{station}/status` after connecting (its last will is the same with
`"state":"offline"`). This module subscribes with `mosquitto_sub` (Debian package
`mosquitto-clients`) as the fleet's monitor account and returns the first status that is
online, from this device, from the version just installed and, after a (re)start, published
after it: a retained `online` left by the previous process does not count.

The monitor password reaches mosquitto_sub through its configuration file (0600, in a private
temporary directory, found through XDG_CONFIG_HOME), never on its command line.
"""

import json
import os
import secrets
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path


class NotOnline(Exception):
    pass


def upstream_version(debian_version):
    """`1:0.1.0-1` -> `0.1.0`: what the agent reports as its version."""
    version = debian_version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def timestamp(text):
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def wait_online(broker, password, env, station, device, version, since, timeout):
    """Returns the first matching status; raises NotOnline with the last one seen."""
    topic = f"cap/{env}/station/{station}/status"
    argv = ["mosquitto_sub", "-h", broker.monitor_host, "-p", str(broker.monitor_port),
            "-i", f"{broker.monitor_user}-{secrets.token_hex(4)}", "-q", "1",
            "-t", topic, "-W", str(max(1, int(timeout)))]
    if broker.tls:
        argv += ["--cafile", str(broker.ca_file)] if broker.ca_file else \
            ["--capath", "/etc/ssl/certs"]
    last = None
    with tempfile.TemporaryDirectory(prefix="capture-fleet-") as home:
        config = Path(home) / "mosquitto_sub"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"-u {broker.monitor_user}\n-P {password}\n")
        env_vars = dict(os.environ, XDG_CONFIG_HOME=home)
        deadline = time.monotonic() + timeout
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env_vars) as sub:
            try:
                for line in sub.stdout:
                    try:
                        status = json.loads(line)
                    except ValueError:
                        continue
                    last = status
                    if (status.get("state") == "online"
                            and status.get("device", device) == device
                            and status.get("version") == version
                            and (since is None or (timestamp(status.get("at")) or 0)
                                 >= since - 2)):
                        return status
                    if time.monotonic() > deadline:
                        break
            finally:
                sub.kill()
                stderr = sub.stderr.read().strip()
    if last is None:
        why = f"no status on {topic} within {timeout}s"
        if stderr and "Timed out" not in stderr:
            why += f" (mosquitto_sub: {stderr.splitlines()[-1]})"
        raise NotOnline(why)
    raise NotOnline(f"not online within {timeout}s; last status on {topic}: "
                    f"state={last.get('state')} version={last.get('version')} "
                    f"at={last.get('at')}")
