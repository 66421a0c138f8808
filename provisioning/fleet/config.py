"""The two inputs of a provisioning run: the fleet configuration and the inventory.

The fleet configuration (TOML) says how to reach the Pis (SSH), which package to install,
and per environment where its broker and object store are. The inventory (CSV) has one row
per Pi: host, device, station, env, cameras.

Both are checked completely before anything happens: every problem is listed with the file,
line or key it concerns, and the run stops (exit 78 for the fleet configuration, 65 for the
inventory) without touching the broker or a single host.
"""

import csv
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import targets

# The topic rule of the MQTT protocol v1 (docs/protocol.md): env, station and device ids.
NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
INVENTORY_COLUMNS = ("host", "device", "station", "env", "cameras")
# Debian architectures a Pi (or, in the tests, this machine) can have: [package] keys.
ARCHITECTURES = ("arm64", "amd64", "armhf")
ROLES = ("line", "ingest")
# Fixed by the systemd unit (StateDirectory=) and the package: not the fleet's to choose.
FIXED_AGENT_KEYS = ("device", "station", "env", "spool_dir")
SPOOL_DIR = "/var/lib/capture-agent"


class ConfigError(Exception):
    """The fleet configuration is unusable; `problems` lists every reason."""

    def __init__(self, path, problems):
        super().__init__(f"{path}: {len(problems)} problem(s)")
        self.path = path
        self.problems = problems


class InventoryError(ConfigError):
    """The inventory is unusable; `problems` lists every reason with its line."""


@dataclass
class Broker:
    """One environment's MQTT broker: as the Pis reach it, and the files this script keeps."""

    host: str
    port: int
    tls: bool
    ca_file: Path | None
    keep_alive: str
    password_file: Path
    acl_file: Path
    # Mosquitto options the fleet needs (max_packet_size), for the broker to include.
    limits_file: Path
    reload_command: list[str]
    monitor_host: str
    monitor_port: int
    monitor_user: str


@dataclass
class Account:
    """An account that is not a Pi: the warehouse line system or the cloud ingest."""

    user: str
    role: str


@dataclass
class Environment:
    name: str
    broker: Broker
    # The agent's [store] section without the credential file paths.
    store: dict
    access_key_id_file: Path
    secret_access_key_file: Path
    accounts: list[Account]


@dataclass
class Ssh:
    user: str | None
    port: int
    identity_file: Path | None
    known_hosts: Path | None
    strict_host_key_checking: str
    connect_timeout: int
    extra_options: list[str]


@dataclass
class Fleet:
    path: Path
    state_dir: Path
    jobs: int
    online_timeout: int
    ssh: Ssh
    packages: dict[str, Path]
    # Sections copied into every agent.toml as they are.
    agent: dict
    disk: dict
    metrics: dict
    camera_defaults: dict
    envs: dict[str, Environment]
    # [monitoring] targets_dir: where the Prometheus target list goes (None: not written).
    targets_dir: Path | None = None


@dataclass
class Device:
    """One inventory row: a Pi."""

    line: int
    host: str
    ssh_user: str | None
    ssh_host: str
    ssh_port: int | None
    device: str
    station: str
    env: str
    cameras: list[tuple[str, str]] = field(default_factory=list)


def parse_duration(text):
    """`30s`, `2m`, `1h` or a number of seconds, to whole seconds."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*(s|m|h)?\s*", str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 2m or 1h")
    return int(match.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


def private_file_problem(path):
    """Why a secret file is unusable (missing, or readable by group or others), or None."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not stat.S_ISREG(mode):
        return f"{path} is not a file"
    if mode & 0o077:
        return f"{path} is readable by group or others (mode {mode & 0o777:04o}): run chmod 600 on it"
    return None


def load_fleet(path):
    """Reads and checks the fleet configuration; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(path, [f"reading: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"TOML: {e}"]) from None
    base = path.resolve().parent
    problems = []

    def rel(value):
        return (base / Path(value).expanduser()) if value is not None else None

    def take(table, key, kind, where, default=None, required=False):
        if key not in table:
            if required:
                problems.append(f"{where}.{key}: missing")
            return default
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
            return default
        return value

    known_top = {"state_dir", "jobs", "online_timeout", "ssh", "package", "agent", "disk",
                 "metrics", "camera", "env", "monitoring"}
    for key in data:
        if key not in known_top:
            problems.append(f"{key}: unknown key (known: {', '.join(sorted(known_top))})")

    state_dir = rel(take(data, "state_dir", str, "fleet", default="fleet-state"))
    jobs = take(data, "jobs", int, "fleet", default=4)
    if not 1 <= jobs <= 64:
        problems.append("jobs: must be within 1..64")
    try:
        online_timeout = parse_duration(data.get("online_timeout", "120s"))
    except ValueError as e:
        problems.append(f"online_timeout: {e}")
        online_timeout = 120

    ssh_table = take(data, "ssh", dict, "fleet", default={})
    known_ssh = {"user", "port", "identity_file", "known_hosts", "strict_host_key_checking",
                 "connect_timeout", "extra_options"}
    for key in ssh_table:
        if key not in known_ssh:
            problems.append(f"ssh.{key}: unknown key (known: {', '.join(sorted(known_ssh))})")
    checking = take(ssh_table, "strict_host_key_checking", str, "ssh", default="yes")
    if checking not in ("yes", "accept-new"):
        problems.append("ssh.strict_host_key_checking: must be \"yes\" or \"accept-new\"")
    try:
        connect_timeout = parse_duration(ssh_table.get("connect_timeout", "10s"))
    except ValueError as e:
        problems.append(f"ssh.connect_timeout: {e}")
        connect_timeout = 10
    extra = take(ssh_table, "extra_options", list, "ssh", default=[])
    if not all(isinstance(o, str) for o in extra):
        problems.append("ssh.extra_options: must be a list of strings")
    ssh = Ssh(
        user=take(ssh_table, "user", str, "ssh"),
        port=take(ssh_table, "port", int, "ssh", default=22),
        identity_file=rel(take(ssh_table, "identity_file", str, "ssh")),
        known_hosts=rel(take(ssh_table, "known_hosts", str, "ssh")),
        strict_host_key_checking=checking,
        connect_timeout=connect_timeout,
        extra_options=extra,
    )
    if ssh.identity_file is not None and not ssh.identity_file.is_file():
        problems.append(f"ssh.identity_file: {ssh.identity_file} does not exist")

    packages = {}
    for arch, value in take(data, "package", dict, "fleet", required=True, default={}).items():
        if arch not in ARCHITECTURES:
            problems.append(f"package.{arch}: unknown architecture ({', '.join(ARCHITECTURES)})")
        elif not isinstance(value, str):
            problems.append(f"package.{arch}: expected a path to a .deb")
        else:
            packages[arch] = rel(value)
            if not packages[arch].is_file():
                problems.append(f"package.{arch}: {packages[arch]} does not exist "
                                "(build it with scripts/package)")

    agent = take(data, "agent", dict, "fleet", default={})
    for key in FIXED_AGENT_KEYS:
        if key in agent:
            problems.append(f"agent.{key}: set per device by the inventory (or fixed to "
                            f"{SPOOL_DIR} by the systemd unit), not in the fleet configuration")
    camera_defaults = take(data, "camera", dict, "fleet", default={})
    for key in ("name", "source"):
        if key in camera_defaults:
            problems.append(f"camera.{key}: set per camera in the inventory's cameras column")

    metrics = take(data, "metrics", dict, "fleet", default={})
    monitoring = take(data, "monitoring", dict, "fleet", default={})
    for key in monitoring:
        if key != "targets_dir":
            problems.append(f"monitoring.{key}: unknown key (known: targets_dir)")
    targets_dir = rel(take(monitoring, "targets_dir", str, "monitoring"))
    if targets_dir is not None:
        listen = metrics.get("listen", targets.DEFAULT_METRICS_LISTEN)
        try:
            host, _ = targets.listen_port(listen)
            if targets.loopback(host):
                problems.append(f"monitoring.targets_dir: metrics.listen is {listen!r}, which "
                                "Prometheus cannot reach from another machine; listen on "
                                "\"0.0.0.0:9464\" (or the Pis' network)")
        except ValueError as e:
            problems.append(f"metrics.listen: {e}")

    envs = {}
    for name, table in take(data, "env", dict, "fleet", required=True, default={}).items():
        env = _load_env(name, table, rel, take, problems)
        if env is not None:
            envs[name] = env

    if problems:
        raise ConfigError(path, problems)
    return Fleet(
        path=path,
        state_dir=state_dir,
        jobs=jobs,
        online_timeout=online_timeout,
        ssh=ssh,
        packages=packages,
        agent=agent,
        disk=take(data, "disk", dict, "fleet", default={}),
        metrics=metrics,
        camera_defaults=camera_defaults,
        envs=envs,
        targets_dir=targets_dir,
    )


def _load_env(name, table, rel, take, problems):
    where = f"env.{name}"
    if not NAME_RULE.match(name):
        problems.append(f"{where}: the environment name must match {NAME_RULE.pattern}")
    if not isinstance(table, dict):
        problems.append(f"{where}: expected a table")
        return None
    for key in table:
        if key not in ("broker", "store", "account"):
            problems.append(f"{where}.{key}: unknown key (broker, store, account)")

    b = take(table, "broker", dict, where, required=True, default={})
    bw = f"{where}.broker"
    known = {"host", "port", "tls", "ca_file", "keep_alive", "password_file", "acl_file",
             "limits_file", "reload_command", "monitor_host", "monitor_port", "monitor_user"}
    for key in b:
        if key not in known:
            problems.append(f"{bw}.{key}: unknown key (known: {', '.join(sorted(known))})")
    host = take(b, "host", str, bw, required=True, default="")
    port = take(b, "port", int, bw, default=1883)
    reload_command = take(b, "reload_command", list, bw, default=[])
    if not all(isinstance(a, str) for a in reload_command):
        problems.append(f"{bw}.reload_command: must be a list of strings, e.g. "
                        "[\"systemctl\", \"reload\", \"mosquitto\"]")
    ca_file = rel(take(b, "ca_file", str, bw))
    if ca_file is not None and not ca_file.is_file():
        problems.append(f"{bw}.ca_file: {ca_file} does not exist")
    monitor_user = take(b, "monitor_user", str, bw, default="capture-fleet")
    acl_file = rel(take(b, "acl_file", str, bw, required=True, default=""))
    broker = Broker(
        host=host,
        port=port,
        tls=take(b, "tls", bool, bw, default=False),
        ca_file=ca_file,
        keep_alive=take(b, "keep_alive", str, bw, default="30s"),
        password_file=rel(take(b, "password_file", str, bw, required=True, default="")),
        acl_file=acl_file,
        limits_file=rel(take(b, "limits_file", str, bw)) or acl_file.with_name("limits.conf"),
        reload_command=reload_command,
        monitor_host=take(b, "monitor_host", str, bw, default=host),
        monitor_port=take(b, "monitor_port", int, bw, default=port),
        monitor_user=monitor_user,
    )
    if ca_file is not None and not broker.tls:
        problems.append(f"{bw}.ca_file: only used with tls = true")

    s = dict(take(table, "store", dict, where, required=True, default={}))
    sw = f"{where}.store"
    for key in ("endpoint", "region", "bucket"):
        if key not in s:
            problems.append(f"{sw}.{key}: missing")
    key_id = s.pop("access_key_id_file", None)
    secret = s.pop("secret_access_key_file", None)
    credentials = []
    for key, value in (("access_key_id_file", key_id), ("secret_access_key_file", secret)):
        if not isinstance(value, str):
            problems.append(f"{sw}.{key}: missing (a file on this machine, mode 0600)")
            credentials.append(None)
            continue
        file = rel(value)
        problem = private_file_problem(file)
        if problem:
            problems.append(f"{sw}.{key}: {problem}")
        credentials.append(file)

    accounts = []
    users = {monitor_user}
    for index, a in enumerate(take(table, "account", list, where, default=[])):
        aw = f"{where}.account[{index}]"
        if not isinstance(a, dict) or set(a) - {"user", "role"}:
            problems.append(f"{aw}: expected a table with user and role")
            continue
        user, role = a.get("user"), a.get("role")
        if not isinstance(user, str) or not NAME_RULE.match(user):
            problems.append(f"{aw}.user: must match {NAME_RULE.pattern}")
        elif user in users:
            problems.append(f"{aw}.user: {user} is used twice")
        users.add(user)
        if role not in ROLES:
            problems.append(f"{aw}.role: must be one of {', '.join(ROLES)}")
        accounts.append(Account(user=user, role=role))
    return Environment(name, broker, s, credentials[0], credentials[1], accounts)


def _split_host(text):
    """`[user@]host[:port]`, with `[v6]:port` for IPv6 addresses."""
    user, _, rest = text.rpartition("@")
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", rest)
    if not match or not rest:
        raise ValueError(f"host {text!r}: write host, user@host or user@host:port")
    host = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4)
    return (user or None), host, (int(port) if port else None)


def load_inventory(path, fleet):
    """Reads and checks the inventory; raises InventoryError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InventoryError(path, [f"reading: {e.strerror}"]) from None
    # Comments and blank lines are allowed; line numbers stay those of the file.
    rows = [(n, line) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise InventoryError(path, ["no header row: host,device,station,env,cameras"])
    problems = []
    header = [c.strip() for c in next(csv.reader([rows[0][1]]))]
    if tuple(header) != INVENTORY_COLUMNS:
        raise InventoryError(path, [f"line {rows[0][0]}: the header must be "
                                    f"{','.join(INVENTORY_COLUMNS)}, not {','.join(header)}"])
    devices = []
    seen = {"host": {}, "device": {}, "station": {}}
    for number, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        where = f"line {number}"
        if len(cells) != len(INVENTORY_COLUMNS):
            problems.append(f"{where}: {len(cells)} columns, expected {len(INVENTORY_COLUMNS)}")
            continue
        host, device, station, env, cameras = cells
        try:
            ssh_user, ssh_host, ssh_port = _split_host(host)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        for column, value in (("device", device), ("station", station), ("env", env)):
            if not NAME_RULE.match(value):
                problems.append(f"{where}: {column} {value!r} must match {NAME_RULE.pattern}")
        if env not in fleet.envs and NAME_RULE.match(env):
            problems.append(f"{where}: env {env!r} has no [env.{env}] in {fleet.path}")
        for column, key in (("host", host), ("device", device), ("station", (env, station))):
            if key in seen[column]:
                shown = station if column == "station" else key
                problems.append(f"{where}: {column} {shown} is already on line "
                                f"{seen[column][key]}")
            else:
                seen[column][key] = number
        if device in {a.user for e in fleet.envs.values() for a in e.accounts} or \
                device in {e.broker.monitor_user for e in fleet.envs.values()}:
            problems.append(f"{where}: device {device} is also the name of a broker account")
        parsed = []
        for entry in cameras.split():
            name, sep, source = entry.partition("=")
            if not sep or not source:
                problems.append(f"{where}: camera {entry!r}: write name=source, e.g. top=test")
            elif not NAME_RULE.match(name):
                problems.append(f"{where}: camera name {name!r} must match {NAME_RULE.pattern}")
            elif name in (n for n, _ in parsed):
                problems.append(f"{where}: camera {name} is listed twice")
            else:
                parsed.append((name, source))
        if not parsed and cameras.strip() == "":
            problems.append(f"{where}: no cameras (e.g. top=v4l2:/dev/v4l/by-id/... side=test)")
        devices.append(Device(number, host, ssh_user, ssh_host, ssh_port, device, station, env,
                              parsed))
    if problems:
        raise InventoryError(path, problems)
    return devices


def write_private(path, data):
    """Writes `data` to `path` with mode 0600 (created so: never readable by others even for
    a moment), replacing it atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode() if isinstance(data, str) else data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
