"""provisioning/provision: the command line and the order of a run.

1. Read and check the fleet configuration and the inventory (nothing happens on a problem).
2. Broker: credentials, password file and ACL for the whole inventory, then reload it once.
   Done first, so that every Pi's account exists before its agent connects. Then the
   Prometheus target list of the whole inventory, when `[monitoring] targets_dir` is set.
3. Every selected host, `--jobs` at a time; a failing host is reported and the others go on:
   probe over SSH, work out what differs, apply it, wait for the station's `online` status.
4. A summary table, and whether anything changed. Exit 0 when every host is fine, 1 when one
   failed, 65 for a bad inventory, 78 for a bad fleet configuration, 64 for bad arguments.
"""

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import broker as broker_files
from . import package as packages
from . import presence, remote, render, targets
from .config import ARCHITECTURES, ConfigError, InventoryError, load_fleet, load_inventory

EXAMPLES = """\
examples:
  provisioning/provision --fleet fleet.toml --inventory line-1.csv --dry-run
  provisioning/provision --fleet fleet.toml --inventory line-1.csv
  provisioning/provision --fleet fleet.toml --inventory line-1.csv --limit 10.20.0.17
  provisioning/provision --fleet fleet.toml --inventory line-1.csv --broker-only
  provisioning/provision --fleet fleet.toml --inventory line-1.csv --limit pi-01 --package arm64=new.deb
"""

_print_lock = threading.Lock()


def say(text):
    with _print_lock:
        print(text, flush=True)


@dataclass
class Result:
    device: object
    ok: bool
    changed: bool
    text: str
    seconds: float


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="provision",
        description="Provision capture-agent Pis from an inventory: MQTT credentials and ACL "
                    "on the broker, agent.toml, the Debian package over SSH, the service, and "
                    "a check that each station reports online.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", required=True, help="fleet configuration (TOML)")
    parser.add_argument("--inventory", required=True, help="inventory (CSV, one row per Pi)")
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would change (hosts are probed read-only), change nothing")
    parser.add_argument("--limit", action="append", default=[], metavar="HOST",
                        help="only this host (the inventory's host column, the bare host name "
                             "or the device id); repeat or separate with commas")
    parser.add_argument("--jobs", type=int, help="hosts at a time (default: the fleet's jobs)")
    parser.add_argument("--broker-only", action="store_true",
                        help="only the broker's credentials, password file and ACL")
    parser.add_argument("--package", action="append", default=[], metavar="ARCH=DEB",
                        help="install this .deb on the Pis of architecture ARCH instead of the "
                             "fleet configuration's [package] ARCH (CI passes the package it "
                             "just built); repeat for each architecture")
    return parser.parse_args(argv)


def package_overrides(items):
    """`arm64=dist/x.deb` items to {arch: Path}; raises ValueError naming the bad one."""
    overrides = {}
    for item in items:
        arch, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--package {item}: write ARCH=PATH, e.g. arm64=dist/x.deb")
        if arch not in ARCHITECTURES:
            raise ValueError(f"--package {item}: unknown architecture {arch!r} "
                             f"({', '.join(ARCHITECTURES)})")
        if not Path(path).is_file():
            raise ValueError(f"--package {item}: {path} does not exist "
                             "(build it with scripts/package)")
        overrides[arch] = Path(path).resolve()
    return overrides


def select(devices, limits):
    wanted = {w.strip() for item in limits for w in item.split(",") if w.strip()}
    if not wanted:
        return devices, []
    chosen = [d for d in devices if {d.host, d.ssh_host, d.device} & wanted]
    matched = {k for d in chosen for k in (d.host, d.ssh_host, d.device)}
    return chosen, sorted(wanted - matched)


def main(argv=None):
    args = parse_args(argv)
    try:
        overrides = package_overrides(args.package)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 64
    try:
        fleet = load_fleet(args.fleet)
        devices = load_inventory(args.inventory, fleet)
    except ConfigError as e:
        print(f"{e.path}: {len(e.problems)} problem(s):", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 65 if isinstance(e, InventoryError) else 78
    chosen, unknown = select(devices, args.limit)
    if unknown:
        print(f"--limit: not in {args.inventory}: {', '.join(unknown)}", file=sys.stderr)
        return 64
    jobs = args.jobs or fleet.jobs
    prefix = "dry run: " if args.dry_run else ""

    credentials = broker_files.Credentials(fleet.state_dir)
    try:
        brokers = broker_files.plan(fleet, devices, credentials)
    except ConfigError as e:
        print(f"{e.path}: {'; '.join(e.problems)}", file=sys.stderr)
        return 78
    broker_changed = any(b.changed for b in brokers)
    for files in brokers:
        if args.dry_run:
            say(f"{prefix}broker {files.password_file}: would change: {files.describe()}"
                if files.changed else f"{prefix}broker {files.password_file}: unchanged")
            continue
        try:
            broker_files.apply(files, credentials, say)
        except (OSError, RuntimeError) as e:
            say(f"broker {files.password_file}: FAILED: {e}")
            say("no host was touched: the Pis could not connect without their accounts")
            return 1
        if not files.changed:
            say(f"broker {files.password_file}: unchanged")
    targets_changed = False
    if fleet.targets_dir is not None:
        try:
            targets_changed = write_targets(fleet, args.inventory, devices, args.dry_run)
        except OSError as e:
            say(f"monitoring targets: FAILED: {e}")
            return 1
    if args.broker_only:
        changed = [what for what, did in (("broker", broker_changed),
                                          ("monitoring targets", targets_changed)) if did]
        say(f"{prefix}{' and '.join(changed) + ' changed' if changed else 'nothing changed'}")
        return 0

    fleet.packages.update(overrides)
    try:
        debs = {arch: packages.read(path) for arch, path in fleet.packages.items()}
    except (OSError, ValueError) as e:
        print(f"package: {e}", file=sys.stderr)
        return 78
    for arch, deb in debs.items():
        if deb.arch != arch:
            print(f"package.{arch}: {deb.path} is built for {deb.arch}", file=sys.stderr)
            return 78

    def one(device):
        return provision_host(fleet, device, debs, credentials, args.dry_run)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, chosen))

    print_summary(results)
    failed = [r for r in results if not r.ok]
    changed_hosts = [r for r in results if r.changed]
    if args.dry_run:
        would = broker_changed or targets_changed or changed_hosts
        say(f"dry run: {'changes pending' if would else 'nothing would change'}; "
            "nothing was changed")
    elif not broker_changed and not targets_changed and not changed_hosts:
        say("nothing changed")
    else:
        say(f"changed: {'broker files, ' if broker_changed else ''}"
            f"{'monitoring targets, ' if targets_changed else ''}"
            f"{len(changed_hosts)} host(s)")
    if failed:
        say(f"{len(failed)} of {len(results)} host(s) FAILED: "
            + ", ".join(r.device.host for r in failed))
        return 1
    return 0


def write_targets(fleet, inventory, devices, dry_run):
    """Writes (or, in a dry run, compares) the inventory's Prometheus target list; True when
    it changed or would change."""
    file = targets.path(fleet, inventory)
    content = targets.render(fleet, devices)
    try:
        same = file.read_bytes() == content
    except FileNotFoundError:
        same = False
    if same:
        say(f"{'dry run: ' if dry_run else ''}monitoring targets {file}: unchanged")
        return False
    if dry_run:
        say(f"dry run: monitoring targets {file}: would write {len(devices)} target(s)")
        return True
    targets.write(file, content)
    say(f"monitoring targets {file}: wrote {len(devices)} target(s)")
    return True


def provision_host(fleet, device, debs, credentials, dry_run):
    started = time.monotonic()
    tag = f"[{device.host} {device.device}]"

    def log(text):
        say(f"{tag} {text}")

    def result(ok, changed, text):
        return Result(device, ok, changed, text, time.monotonic() - started)

    try:
        ssh = remote.Ssh(fleet.ssh, device)
        found = remote.probe(ssh)
        deb = debs.get(found.arch)
        if deb is None:
            raise remote.HostError(f"no package for architecture {found.arch or '?'} "
                                   f"in [package] of {fleet.path}")
        files = render.device_files(fleet, device)
        plan = remote.plan(found, deb, files)
        if credentials.get(device.device) is None:
            if not dry_run:
                raise remote.HostError(f"no MQTT credentials for {device.device} in "
                                       f"{credentials.dir}")
            # A device new to the broker: a dry run has not generated its password yet.
            plan.files.append(render.RemoteFile("mqtt-password", b"", 0o600, "", "", True))
        summary = remote.describe(found, deb, plan)
        if dry_run:
            text = "unchanged" if plan.empty else f"would {summary}"
            log(text)
            return result(True, not plan.empty, text)
        if not plan.empty:
            log(f"applying: {summary}")
            report = remote.apply(ssh, deb, plan, found.systemd)
            if report.get("systemd") == "no":
                log("systemd is not running there: the service was not started; start "
                    "/usr/bin/capture-agent run --config /etc/capture-agent/agent.toml "
                    "as user capture-agent")
        env = fleet.envs[device.env]
        version = presence.upstream_version(deb.version)
        since = found.now if plan.restart else None
        log(f"waiting up to {fleet.online_timeout}s for station {device.station} to report "
            f"{device.device} online with version {version}")
        status = presence.wait_online(
            env.broker, credentials.get(env.broker.monitor_user), device.env, device.station,
            device.device, version, since, fleet.online_timeout)
        log(f"online (status at {status.get('at')})")
        return result(True, not plan.empty, "unchanged, online" if plan.empty
                      else f"{summary}; online")
    except remote.HostError as e:
        log(f"FAILED: {e}")
        for line in e.detail.splitlines():
            log(f"  | {line}")
        return result(False, False, f"FAILED: {e}")
    except presence.NotOnline as e:
        log(f"FAILED: {e}")
        return result(False, True, f"FAILED: {e}")
    except (OSError, ValueError) as e:
        log(f"FAILED: {e}")
        return result(False, False, f"FAILED: {e}")


def print_summary(results):
    rows = [("HOST", "DEVICE", "STATION", "RESULT", "TIME")]
    rows += [(r.device.host, r.device.device, r.device.station, r.text, f"{r.seconds:.1f}s")
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    say("")
    for row in rows:
        say("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
