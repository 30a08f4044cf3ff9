"""A Ray cluster's address, checked before anything heavy is imported: `--ray-address` that nothing answers
fails in about a second with one line, instead of after torch's import or minutes of Ray's own retries.

Torch-free and Ray-free (grpcio only, when installed), so the CLI probes before it imports the runner.
"""
from __future__ import annotations

import socket

from nin_bench.errors import UserError

# How long the driver waits for a TCP answer from the cluster's address before giving up: a live head answers in
# milliseconds even across a data centre, and Ray's own client would instead retry for minutes.
CONNECT_TIMEOUT_S = 10.0
# Ray's default ports: GCS (`ray start --head --port`) and the Ray Client server (`--ray-client-server-port`).
GCS_PORT, CLIENT_PORT = 6379, 10001


class RayUnavailable(UserError):
    """The Ray cluster cannot be reached or cannot run a unit (one line: the address or the resource, the remedy)."""


def probe(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with one line, when nothing answers at a cluster address ("auto" is left to Ray).

    Args:
        address: "HOST:PORT" (the head's GCS) or "ray://HOST[:PORT]" (its Ray Client server).
        timeout_s: how long a TCP connect may take.

    Raises:
        RayUnavailable: a malformed address, or no TCP answer within `timeout_s`.
    """
    if address == "auto":
        return
    client = address.startswith("ray://")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep:
        host, port = port, str(CLIENT_PORT if client else GCS_PORT)
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RayUnavailable(f"no Ray cluster at {address}: TCP connect to {host}:{port} failed within "
                             f"{timeout_s:g} s ({why}); start one with `ray start --head` or fix "
                             "--ray-address") from None
    _probe_grpc(address, f"{host}:{port}", timeout_s)


def _probe_grpc(address: str, target: str, timeout_s: float) -> None:
    """Both a head's GCS and its Ray Client server speak gRPC: a port that accepts TCP but never completes the
    gRPC handshake is not a Ray head (Ray itself would wait on it for minutes). Skipped without grpcio."""
    try:
        import grpc
    except ImportError:
        return
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise RayUnavailable(f"no Ray cluster at {address}: {target} accepts TCP but gave no gRPC answer within "
                             f"{timeout_s:g} s (not a Ray head's GCS or Ray Client port?)") from None
    finally:
        channel.close()
