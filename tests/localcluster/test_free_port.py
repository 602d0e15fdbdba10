"""free_port: a port that a process we start can bind, out of the range outgoing connections use."""

from __future__ import annotations

import random
import socket

from localcluster.processes import _ephemeral_ports, free_port


def test_free_ports_are_bindable_and_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    for port in ports:
        assert port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert len(set(ports)) > 1  # picked at random: two clusters on one host rarely meet


def test_a_port_in_use_is_never_given() -> None:
    held = []
    try:
        for _ in range(20):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port()))
            s.listen()
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert not taken & {free_port() for _ in range(200)}
    finally:
        for s in held:
            s.close()


def test_a_port_is_handed_out_once_per_process() -> None:
    """An operator's metrics and health ports, asked for one after the other, once came out equal
    (a random pick in ~12,000 ports, twice: a clash every few thousand pairs)."""
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
    random.seed(7)  # a test seeding the shared generator does not make ports repeat
    first = free_port()
    random.seed(7)
    assert free_port() != first
