"""What a capture-agent .deb holds: its version, architecture and the binary's sha256.

Read with the standard library (a .deb is an `ar` archive of control.tar.* and data.tar.*),
so that the provisioning machine needs no dpkg. The binary's hash is compared with the one on
the Pi: a rebuilt package with an unchanged version is still recognised as different.
"""

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Package:
    path: Path
    version: str
    arch: str
    binary_sha256: str


def _ar_members(data):
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        yield name, data[offset + 60:offset + 60 + size]
        offset += 60 + size + (size % 2)


def read(path):
    path = Path(path)
    control = binary = None
    for name, body in _ar_members(path.read_bytes()):
        if name.startswith("control.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                member = tar.extractfile("./control")
                control = member.read().decode() if member else None
        elif name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                member = tar.extractfile("./usr/bin/capture-agent")
                binary = hashlib.sha256(member.read()).hexdigest() if member else None
    if control is None or binary is None:
        raise ValueError(f"{path} is not a capture-agent package (no control or binary)")
    fields = dict(line.split(": ", 1) for line in control.splitlines()
                  if ": " in line and not line.startswith(" "))
    if fields.get("Package") != "capture-agent":
        raise ValueError(f"{path} is package {fields.get('Package')}, not capture-agent")
    return Package(path, fields["Version"], fields["Architecture"], binary)
