"""Knocking on a listener as an outsider, and listing what a process listens on."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from ppml.proto.deploy.tls import TlsFiles


def knock(address: tuple[str, int], context: ssl.SSLContext | None, data: bytes) -> bytes:
    """Connect, send ``data`` (in TLS if a context is given), return whatever comes back."""
    raw = socket.create_connection(address, timeout=10)
    try:
        if context is None:
            raw.sendall(data)
            return raw.recv(200)
        with context.wrap_socket(raw) as tls:
            tls.sendall(data)
            return tls.recv(200)
    except (OSError, ssl.SSLError):
        return b""
    finally:
        raw.close()


def outsider(files: TlsFiles | None) -> ssl.SSLContext:
    """A TLS 1.3 client that does not check the server and shows ``files`` (if any)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if files is not None:
        context.load_cert_chain(str(files.cert), str(files.key))
    return context


def _address(hex_host: str) -> str:
    """A /proc/net address: IPv4, or IPv6 in 32-bit little-endian words (v4-mapped as v4)."""
    raw = bytes.fromhex(hex_host)
    if len(raw) == 4:
        return socket.inet_ntoa(raw[::-1])
    address = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return str(address.ipv4_mapped or address)


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                found.add((_address(host), int(port, 16)))
    return found
