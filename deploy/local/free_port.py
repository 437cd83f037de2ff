#!/usr/bin/env python3
"""A free TCP port on 127.0.0.1 for a private server (tests, benchmarks,
the local stack). Prints it when run as a script.

The port is drawn at random BELOW the kernel's ephemeral range
(net.ipv4.ip_local_port_range): a port from bind(0) lies inside that
range, and once released it can be taken as the local end of any outgoing
connection (or a reconnecting client's self-connection) before the server
it was meant for binds it, or while that server restarts; the server then
fails with "address in use". Outgoing connections never use ports below
the range. A port is returned only if it can be bound now and nobody
listens on it.
"""
import random
import socket

_LOW = 10000  # lowest port handed out


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    high = _ephemeral_low()
    if high - _LOW >= 1000:
        for _ in range(200):
            port = random.randrange(_LOW, high)
            if _bindable(port):
                return port
    # A machine whose ephemeral range starts low: the kernel's choice.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    print(free_port())
