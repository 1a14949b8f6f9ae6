"""How the clients open gRPC channels: TLS for any target off this machine, plaintext only on loopback.

A token or an inference key sent in plaintext across a network is anyone's who can read it, so the clients
(`BoardClient`, the `board` command, the board's TorchServe client) choose TLS themselves unless the target is
loopback (127.0.0.0/8, ::1, localhost) or a Unix socket; plaintext elsewhere is an explicit opt-out
(``--plaintext``, as grpcurl's ``-plaintext``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import grpc


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (bracketed or not) and localhost; False for wildcards and any other."""
    name = host.strip().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_local_target(target: str) -> bool:
    """True when a gRPC target stays on this machine: a loopback host (``127.0.0.1:50051``,
    ``dns:///[::1]:7070``, ``localhost:7070``), an address list of loopback hosts only
    (``ipv4:127.0.0.1:1,127.0.0.1:2``) or a Unix socket (``unix:/run/board.sock``)."""
    name = target.strip()
    if name.startswith(("unix:", "unix-abstract:")):
        return True
    if "://" in name:
        name = name.split("://", 1)[1].lstrip("/")
    elif name.startswith(("dns:", "ipv4:", "ipv6:")):
        name = name.split(":", 1)[1]
    return all(_is_loopback_address(address) for address in name.split(","))


def _is_loopback_address(address: str) -> bool:
    """One ``host[:port]`` of a target."""
    if is_loopback_host(address):  # no port: localhost, ::1
        return True
    return is_loopback_host(address.rsplit(":", 1)[0])


def uses_tls(target: str, *, tls: bool | None, root_certificates: bytes | None) -> bool:
    """Whether a channel to ``target`` is TLS: ``tls`` when given (True, or False for plaintext), TLS with
    ``root_certificates``, otherwise TLS unless the target is local."""
    if tls is not None:
        return tls
    return root_certificates is not None or not is_local_target(target)


def open_channel(
    target: str,
    *,
    tls: bool | None = None,
    root_certificates: bytes | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``target``, TLS as ``uses_tls`` decides (the system's roots unless
    ``root_certificates`` are given)."""
    if uses_tls(target, tls=tls, root_certificates=root_certificates):
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.secure_channel(target, credentials, options=list(options))
    return grpc.insecure_channel(target, options=list(options))
