"""MQTT accounts: generated credentials, the broker's password file and its ACL.

Credentials. Every account (one per Pi, the line system's, the ingest's and this script's own
monitor account) gets a random password once; it is kept in `<state_dir>/credentials/<user>`
(mode 0600 in a 0700 directory) and reused by every later run. That file is what makes a
second run change nothing, and where the line system's and the ingest's passwords are handed
over from. It is never printed.

Password file. Kept with `mosquitto_passwd`, entry by entry: an entry is (re)written only
when it is missing or its hash does not match the stored password, so unchanged entries keep
their salt and the file stays byte-identical. Entries this script never created (no
credentials file) are left alone; entries it created for a device no longer in the inventory
are deleted.

ACL. The whole file is generated from the inventory and the fleet configuration, sorted, with
no timestamp: the same inputs give the same bytes. Mosquitto's `acl_file` denies everything
not listed. What each account may do (the MQTT protocol v1 of docs/protocol.md):

    device D at station S    read  cap/E/station/S/cmd, cap/E/device/D/confirm
                             write cap/E/station/S/{reply,event,status}, cap/E/ingest/uploaded
    line                     write cap/E/station/+/cmd
                             read  cap/E/station/+/{reply,event,status}
    ingest                   read  cap/E/ingest/uploaded (as $share/ingest/...), status,
                                   cap/E/station/+/{event,cmd,reply} (as $share/ingest/...)
                             write cap/E/device/+/confirm
    monitor (this script)    read  cap/E/station/+/status

Limits. `limits_file` (default `limits.conf` beside the ACL) holds the Mosquitto options the
fleet needs, for the broker's configuration to include (`include_dir`): `max_packet_size`, so
that a broken sender cannot hand the broker (and the stations) arbitrarily large packets. The
agent reads every packet up to MAX_INCOMING_PACKET_BYTES (128 KiB) and cuts larger ones unread,
answering `bad_request` (docs/protocol.md, "Size limits"); the broker refuses packets over
BROKER_MAX_PACKET_BYTES and disconnects their sender. Generated like the ACL: same inputs,
same bytes.

Mosquitto's acl_file checks every delivery, not the SUBSCRIBE itself: a device may subscribe
to `#` (the SUBACK grants it) but is delivered only what its read entries allow.
"""

import base64
import hashlib
import hmac
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, write_private


# The whole MQTT packet, header included. Far above every message of the protocol (commands are
# refused over 64 KiB, the agent sends at most 128 KiB), so an oversized command still reaches
# its station and is answered `bad_request`; low enough that no sender can make the broker
# buffer hundreds of MiB.
BROKER_MAX_PACKET_BYTES = 1 << 20


def limits_text():
    return "\n".join([
        "# Mosquitto limits for the capture fleet, written by provisioning/provision.",
        "# Include this file from mosquitto.conf (e.g. include_dir on its directory) and",
        "# restart Mosquitto after it changed. See docs/protocol.md, \"Size limits\".",
        "#",
        "# A packet over this many bytes is refused and its sender disconnected. Stations cut",
        "# any command packet over 128 KiB unread and answer bad_request, whatever this says.",
        f"max_packet_size {BROKER_MAX_PACKET_BYTES}",
        "",
    ])


def device_acl(env, device, station):
    return [
        f"topic read cap/{env}/station/{station}/cmd",
        f"topic read cap/{env}/device/{device}/confirm",
        f"topic write cap/{env}/station/{station}/reply",
        f"topic write cap/{env}/station/{station}/event",
        f"topic write cap/{env}/station/{station}/status",
        f"topic write cap/{env}/ingest/uploaded",
    ]


def account_acl(env, role):
    if role == "line":
        return [
            f"topic write cap/{env}/station/+/cmd",
            f"topic read cap/{env}/station/+/reply",
            f"topic read cap/{env}/station/+/event",
            f"topic read cap/{env}/station/+/status",
        ]
    # The ingest: the uploaded notifications, and every station's status, events, the line's
    # commands and the stations' replies (read only), for the expected clips.
    return [
        f"topic read cap/{env}/ingest/uploaded",
        f"topic write cap/{env}/device/+/confirm",
        f"topic read cap/{env}/station/+/status",
        f"topic read cap/{env}/station/+/event",
        f"topic read cap/{env}/station/+/cmd",
        f"topic read cap/{env}/station/+/reply",
    ]


class Credentials:
    """The generated passwords, one 0600 file per account under `<state_dir>/credentials`."""

    def __init__(self, state_dir):
        self.dir = Path(state_dir) / "credentials"

    def get(self, user):
        try:
            return (self.dir / user).read_text().strip()
        except FileNotFoundError:
            return None

    def create(self, user):
        password = secrets.token_urlsafe(24)
        self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.parent.chmod(0o700)
        write_private(self.dir / user, password + "\n")
        return password

    def users(self):
        if not self.dir.is_dir():
            return set()
        return {p.name for p in self.dir.iterdir() if not p.name.startswith(".")}

    def forget(self, user):
        (self.dir / user).unlink(missing_ok=True)


def hash_matches(entry_hash, password):
    """Whether a Mosquitto password-file hash (`$7$` PBKDF2-SHA512 or `$6$` SHA512) is the
    hash of `password`."""
    parts = entry_hash.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), parts[3], parts[4]
            computed = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                           iterations)
        elif len(parts) == 4 and parts[1] == "6":
            salt, digest = parts[2], parts[3]
            computed = hashlib.sha512(password.encode() + base64.b64decode(salt)).digest()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(base64.b64encode(computed).decode(), digest)


def read_password_file(path):
    """user -> hash of every entry in a Mosquitto password file (empty when absent)."""
    entries = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        user, sep, hashed = line.partition(":")
        if sep and not line.startswith("#"):
            entries[user] = hashed.strip()
    return entries


@dataclass
class BrokerFiles:
    """What one broker's password file and ACL should hold, and what has to change."""

    password_file: Path
    acl_file: Path
    reload_command: list[str]
    limits_file: Path | None = None
    # user -> role ("device", "line", "ingest", "monitor"), every account of this broker.
    accounts: dict = field(default_factory=dict)
    acl_text: str = ""
    limits_changed: bool = False
    new_credentials: list = field(default_factory=list)
    set_entries: list = field(default_factory=list)
    remove_entries: list = field(default_factory=list)
    acl_changed: bool = False

    @property
    def changed(self):
        return bool(self.new_credentials or self.set_entries or self.remove_entries
                    or self.acl_changed or self.limits_changed)

    def describe(self):
        """What changes, by account name only (never a secret)."""
        parts = []
        if self.new_credentials:
            parts.append("new credentials for " + ", ".join(self.new_credentials))
        added = [u for u in self.set_entries if u not in self.new_credentials]
        if added:
            parts.append("password entries (re)written for " + ", ".join(added))
        if self.remove_entries:
            parts.append("removed " + ", ".join(self.remove_entries))
        if self.acl_changed:
            parts.append(f"ACL {self.acl_file} rewritten")
        if self.limits_changed:
            parts.append(f"limits {self.limits_file} rewritten (restart Mosquitto to apply)")
        return "; ".join(parts) or "unchanged"


def plan(fleet, devices, credentials):
    """Works out every broker's files from the inventory; changes nothing."""
    brokers = {}
    acl_blocks = {}
    for env in fleet.envs.values():
        b = env.broker
        files = brokers.get(b.password_file)
        if files is None:
            files = brokers[b.password_file] = BrokerFiles(b.password_file, b.acl_file,
                                                           b.reload_command,
                                                           limits_file=b.limits_file)
            acl_blocks[b.password_file] = {}
        elif files.acl_file != b.acl_file:
            raise ConfigError(fleet.path, [f"env.{env.name}.broker: password_file "
                                           f"{b.password_file} is used with two ACL files"])
        blocks = acl_blocks[b.password_file]
        blocks.setdefault(b.monitor_user, ("monitor", []))[1].append(
            f"topic read cap/{env.name}/station/+/status")
        files.accounts[b.monitor_user] = "monitor"
        for account in env.accounts:
            blocks.setdefault(account.user, (account.role, []))[1].extend(
                account_acl(env.name, account.role))
            files.accounts[account.user] = account.role
    for d in devices:
        password_file = fleet.envs[d.env].broker.password_file
        acl_blocks[password_file][d.device] = (
            f"device {d.device}, station {d.station}, env {d.env}",
            device_acl(d.env, d.device, d.station))
        brokers[password_file].accounts[d.device] = "device"

    ours = credentials.users()
    for password_file, files in brokers.items():
        lines = ["# Mosquitto ACL for the capture fleet, written by provisioning/provision.",
                 "# Regenerated from the inventory and the fleet configuration on every run:",
                 "# change those, not this file.", ""]
        for user in sorted(acl_blocks[password_file]):
            what, topics = acl_blocks[password_file][user]
            lines += [f"# {what}", f"user {user}", *topics, ""]
        files.acl_text = "\n".join(lines)
        try:
            files.acl_changed = files.acl_file.read_text() != files.acl_text
        except FileNotFoundError:
            files.acl_changed = True
        try:
            files.limits_changed = files.limits_file.read_text() != limits_text()
        except FileNotFoundError:
            files.limits_changed = True
        entries = read_password_file(password_file)
        for user in sorted(files.accounts):
            password = credentials.get(user)
            if password is None:
                files.new_credentials.append(user)
                files.set_entries.append(user)
            elif user not in entries or not hash_matches(entries[user], password):
                files.set_entries.append(user)
        files.remove_entries = sorted(u for u in entries if u in ours and u not in files.accounts)
    return list(brokers.values())


def apply(files, credentials, log):
    """Writes one broker's changes and asks the broker to reload them."""
    if not files.changed:
        return
    if not files.password_file.exists():
        write_private(files.password_file, "")
    for user in files.set_entries:
        password = credentials.get(user) or credentials.create(user)
        # The password goes through stdin (prompt, then confirmation), never on a command
        # line where `ps` would show it.
        run = subprocess.run(["mosquitto_passwd", str(files.password_file), user],
                             input=f"{password}\n{password}\n", text=True,
                             capture_output=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd {files.password_file} {user}: "
                               f"{run.stderr.strip() or run.stdout.strip()}")
    for user in files.remove_entries:
        run = subprocess.run(["mosquitto_passwd", "-D", str(files.password_file), user],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"mosquitto_passwd -D {files.password_file} {user}: "
                               f"{run.stderr.strip()}")
        credentials.forget(user)
    if files.acl_changed:
        replace_file(files.acl_file, files.acl_text)
    if files.limits_changed:
        replace_file(files.limits_file, limits_text())
    log(f"broker {files.password_file}: {files.describe()}")
    if files.reload_command:
        run = subprocess.run(files.reload_command, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"reloading the broker ({' '.join(files.reload_command)}) "
                               f"failed: {run.stderr.strip()}")
        log(f"broker reloaded: {' '.join(files.reload_command)}")
    else:
        log("broker: no reload_command configured; reload Mosquitto yourself (SIGHUP)")


def replace_file(path, text):
    """Writes `path` atomically, keeping its mode (0644 for a new file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    if path.exists():
        tmp.chmod(path.stat().st_mode & 0o777)
    else:
        tmp.chmod(0o644)
    tmp.replace(path)
