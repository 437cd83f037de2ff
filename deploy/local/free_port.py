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
listens on it, and never twice in one process.
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


_given = set()  # ports this process handed out already
_next = []  # the walk's next offset, from a random start


def free_port():
    high = _ephemeral_low()
    span = high - _LOW
    if span >= 1000:
        # One walk through the range from a random start: never the same
        # port twice in a process (random draws would repeat one now and
        # then, and two servers of one test would get it), and two
        # processes' walks meet only if their starts happen to be close.
        if not _next:
            _next.append(random.randrange(span))
        for _ in range(span):
            port = _LOW + _next[0] % span
            _next[0] += 1
            if port not in _given and _bindable(port):
                _given.add(port)
                return port
    # A machine whose ephemeral range starts low: the kernel's choice.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    print(free_port())
