"""One Pi over SSH: read what it has (probe), then change what differs (apply).

Two SSH sessions per Pi at most. The probe is read-only: architecture, installed package
version, sha256 of the installed binary and of each file in /etc/capture-agent/ with its mode
and owner, whether systemd runs there and the service's state, and the Pi's clock. The apply
session sends one tar stream on stdin (the .deb when it is to be installed, the files that
differ, and `apply.sh`) and runs `apply.sh` as root, which:

1. installs the package with apt-get (dependencies from the Pi's own Debian mirror;
   `--allow-downgrades`, so installing an older .deb is the rollback);
2. writes the files that differ, keeping the previous ones aside;
3. validates the configuration as the agent's user (`capture-agent validate`, which also
   checks the secret files are readable by it and by nobody else) and puts the previous
   files back if it does not validate, so that a bad render never reaches the service;
4. enables and (re)starts the service where systemd runs; `systemctl restart` of a
   Type=notify unit returns once the agent said READY=1 (or failed).

Where systemd is not PID 1 (containers, the tests) step 4 is skipped and reported: the agent
is then started by other means, and the online check that follows still applies.

Commands run through `sudo -n` unless the SSH user is root, so sudo must not ask for a
password. Secrets travel only inside the SSH session's stdin.
"""

import getpass
import io
import shlex
import subprocess
import tarfile
from dataclasses import dataclass, field
from importlib import resources

PROBE = r"""
set -u
echo "arch=$(dpkg --print-architecture 2>/dev/null)"
echo "package=$(dpkg-query -W -f='${Status}|${Version}' capture-agent 2>/dev/null)"
if [ -f /usr/bin/capture-agent ]; then
  echo "binary=$(sha256sum /usr/bin/capture-agent | cut -d' ' -f1)"
fi
for f in /etc/capture-agent/*; do
  [ -f "$f" ] || continue
  echo "file.${f##*/}=$(sha256sum "$f" | cut -d' ' -f1) $(stat -c '%a %U %G' "$f")"
done
if [ -d /run/systemd/system ]; then
  echo systemd=yes
  echo "enabled=$(systemctl is-enabled capture-agent.service 2>/dev/null)"
  echo "active=$(systemctl is-active capture-agent.service 2>/dev/null)"
else
  echo systemd=no
fi
echo "now=$(date +%s)"
"""


class HostError(Exception):
    """A step on one host failed; the message says which and why (never a secret), `detail`
    what the Pi printed (apt, validate or systemctl output)."""

    def __init__(self, message, detail=""):
        super().__init__(message)
        self.detail = detail


@dataclass
class Probe:
    arch: str
    package_version: str | None
    binary_sha256: str | None
    # name -> (sha256, mode as `stat %a`, owner, group)
    files: dict
    systemd: bool
    enabled: str
    active: str
    now: int


@dataclass
class Plan:
    install: bool = False
    files: list = field(default_factory=list)
    enable: bool = False
    restart: bool = False

    @property
    def empty(self):
        return not (self.install or self.files or self.enable or self.restart)


class Ssh:
    """How to run a command on one Pi."""

    def __init__(self, settings, device):
        self.device = device
        user = device.ssh_user or settings.user
        self.root = (user or getpass.getuser()) == "root"
        destination = device.ssh_host if ":" not in device.ssh_host else f"[{device.ssh_host}]"
        self.argv = [
            "ssh", "-p", str(device.ssh_port or settings.port),
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={settings.connect_timeout}",
            "-o", f"StrictHostKeyChecking={settings.strict_host_key_checking}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
        ]
        if settings.known_hosts is not None:
            self.argv += ["-o", f"UserKnownHostsFile={settings.known_hosts}"]
        if settings.identity_file is not None:
            self.argv += ["-i", str(settings.identity_file), "-o", "IdentitiesOnly=yes"]
        self.argv += settings.extra_options
        self.argv.append(f"{user}@{destination}" if user else destination)

    def run(self, command, stdin=b"", timeout=900):
        """Runs `command` (a shell string) as root on the Pi; returns (rc, stdout, stderr)."""
        if not self.root:
            command = f"sudo -n sh -c {shlex.quote(command)}"
        try:
            done = subprocess.run([*self.argv, "--", command], input=stdin,
                                  capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise HostError(f"ssh: no answer within {timeout}s") from None
        stdout = done.stdout.decode(errors="replace")
        stderr = done.stderr.decode(errors="replace").strip()
        if done.returncode == 255:
            raise HostError(f"unreachable: {last_line(stderr) or 'ssh failed'}")
        if "sudo: a password is required" in stderr:
            raise HostError("sudo asks for a password: give the SSH user NOPASSWD sudo")
        return done.returncode, stdout, stderr


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def parse_keys(stdout):
    values = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def probe(ssh):
    rc, stdout, stderr = ssh.run(f"sh -c {shlex.quote(PROBE)}")
    if rc != 0:
        raise HostError(f"probe failed (exit {rc}): {last_line(stderr)}")
    values = parse_keys(stdout)
    status, _, version = values.get("package", "").partition("|")
    files = {}
    for key, value in values.items():
        if key.startswith("file."):
            sha, mode, owner, group = (value.split() + ["", "", ""])[:4]
            files[key[5:]] = (sha, mode, owner, group)
    return Probe(
        arch=values.get("arch", ""),
        package_version=version if status == "install ok installed" else None,
        binary_sha256=values.get("binary"),
        files=files,
        systemd=values.get("systemd") == "yes",
        enabled=values.get("enabled", ""),
        active=values.get("active", ""),
        now=int(values.get("now", "0") or 0),
    )


def plan(found, package, files):
    """What has to change on a Pi that `found` describes."""
    result = Plan()
    result.install = (found.package_version != package.version
                      or found.binary_sha256 != package.binary_sha256)
    for f in files:
        wanted = (f.sha256, format(f.mode, "o"), f.owner, f.group)
        if found.files.get(f.name) != wanted:
            result.files.append(f)
    if found.systemd:
        result.enable = found.enabled != "enabled"
        result.restart = bool(result.install or result.files or found.active != "active")
    else:
        result.restart = bool(result.install or result.files)
    return result


def describe(found, package, plan_):
    parts = []
    if plan_.install:
        if found.package_version is None:
            parts.append(f"install {package.version}")
        elif found.package_version != package.version:
            parts.append(f"upgrade {found.package_version} -> {package.version}")
        else:
            parts.append(f"reinstall {package.version} (the binary differs)")
    if plan_.files:
        parts.append("write " + ", ".join(f.name for f in plan_.files))
    if plan_.enable:
        parts.append("enable")
    if plan_.restart:
        parts.append("restart" if found.systemd else "restart (by hand: no systemd)")
    return ", ".join(parts) or "nothing"


def _add(tar, name, data, mode):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def apply(ssh, package, plan_, systemd):
    """Sends what differs and runs apply.sh; returns its key=value report."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        script = resources.files(__package__).joinpath("apply.sh").read_bytes()
        _add(tar, "apply.sh", script, 0o700)
        entries = []
        for f in plan_.files:
            _add(tar, f"files/{f.name}", f.content, 0o600)
            entries.append(f"{f.name}:{f.mode:o}:{f.owner}:{f.group}")
        lines = [f"INSTALL={int(plan_.install)}", f"RESTART={int(plan_.restart)}",
                 f"FILES={shlex.quote(' '.join(entries))}",
                 f"PACKAGE_FILE={shlex.quote(package.path.name)}",
                 f"PACKAGE_VERSION={shlex.quote(package.version)}"]
        _add(tar, "plan", ("\n".join(lines) + "\n").encode(), 0o600)
        if plan_.install:
            _add(tar, f"pkg/{package.path.name}", package.path.read_bytes(), 0o644)
    command = ('d=$(mktemp -d /tmp/capture-provision.XXXXXX) && '
               'trap \'rm -rf "$d"\' EXIT && chmod 0711 "$d" && '
               'tar -x -o -C "$d" -f - && sh "$d/apply.sh" "$d"')
    rc, stdout, stderr = ssh.run(f"sh -c {shlex.quote(command)}", stdin=buffer.getvalue())
    report = parse_keys(stdout)
    if rc != 0:
        raise HostError(report.get("error") or f"apply failed (exit {rc})",
                        "\n".join(stderr.splitlines()[-20:]))
    if not systemd:
        report["systemd"] = "no"
    return report
