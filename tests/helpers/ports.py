"""A free port for each multi-process run, so that DDP runs in parallel test workers never meet."""

from __future__ import annotations

import os
import socket


def free_port_env() -> dict[str, str]:
    """This process's environment with ``MASTER_PORT`` set to a port nothing listens on now (Lightning's
    ranks rendezvous there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**os.environ, "MASTER_PORT": str(port)}
