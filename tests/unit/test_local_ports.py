"""TorchServe's own ports for `synthdet serve`: free, distinct, and never ones an outgoing
connection could take between their choice and TorchServe's bind."""

from __future__ import annotations

import socket

from synthdet.local_serve import LOWEST_PRIVATE_PORT, ephemeral_ports, private_ports


def test_private_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low, high = ephemeral_ports()
    assert LOWEST_PRIVATE_PORT < low <= high
    ports = private_ports(5)
    assert len(set(ports)) == 5
    assert all(LOWEST_PRIVATE_PORT <= port < low for port in ports)
    for port in ports:  # free right now: each can be bound
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_chosen() -> None:
    low, _ = ephemeral_ports()
    listeners = []
    try:
        # Occupy a good share of the range; the choice must step round every one of them.
        for port in range(LOWEST_PRIVATE_PORT, min(low, LOWEST_PRIVATE_PORT + 500)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sock.listen()
            listeners.append(sock)
        taken = {sock.getsockname()[1] for sock in listeners}
        for _ in range(20):
            assert not taken & set(private_ports(5))
    finally:
        for sock in listeners:
            sock.close()
