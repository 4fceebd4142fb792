"""What get_extra_info('socket') and Server.sockets give on the remote loop:
an object with a socket's surface where it makes sense for a socket on the
service's host (asyncio's own loop gives a TransportSocket, which is also
a restricted view)."""
from __future__ import annotations

import errno
import socket
from typing import Callable, Dict, Tuple

from ._wire import pb

#: The options a connection's socket takes (the service allows these alone).
SETTABLE = {
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.SOL_SOCKET, socket.SO_SNDBUF),
    (socket.SOL_SOCKET, socket.SO_RCVBUF), (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT), (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    (socket.IPPROTO_IP, socket.IP_TOS), (socket.IPPROTO_IPV6, socket.IPV6_TCLASS),
}


def _family_of(address) -> int:
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if len(address) == 4 else socket.AF_INET


class _RemoteSocketBase:
    type = socket.SOCK_STREAM
    proto = 0

    def __init__(self, sockname, peername=None):
        self._sockname, self._peername = sockname, peername
        self.family = socket.AddressFamily(_family_of(sockname if sockname not in (None, "") else peername or ""))
        self._options: Dict[Tuple[int, int], int] = {}

    def getsockname(self):
        return self._sockname

    def getpeername(self):
        if self._peername is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._peername

    def fileno(self) -> int:
        return -1  # no descriptor here: the socket is on the service's host

    def getsockopt(self, level, option, buflen=None):
        if buflen is not None:
            raise OSError(errno.ENOPROTOOPT, "buffer options are not available on a remote socket")
        if (level, option) == (socket.SOL_SOCKET, socket.SO_TYPE):
            return int(self.type)
        if (level, option) in self._options:
            return self._options[(level, option)]
        raise OSError(errno.ENOPROTOOPT, f"option {level}/{option} of a socket on the service's host is not known "
                                         "here (only those set through this object are)")

    def __repr__(self):
        return f"<conduit remote socket family={self.family!r} laddr={self._sockname!r} raddr={self._peername!r}>"


class RemoteSocket(_RemoteSocketBase):
    """A connection's socket: setsockopt is carried to the service (for the
    options in SETTABLE; the service answers a failure as command_failed,
    which the transport logs), getsockopt answers what was set here."""

    def __init__(self, sockname, peername, send: Callable[..., None]):
        super().__init__(sockname, peername)
        self._send = send

    def setsockopt(self, level, option, value, optlen=None) -> None:
        if optlen is not None or not isinstance(value, (int, bool)):
            raise OSError(errno.ENOPROTOOPT, "a remote socket takes integer options alone")
        if self.family == socket.AF_UNIX and level != socket.SOL_SOCKET:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        if (level, option) not in SETTABLE:
            raise OSError(errno.ENOPROTOOPT, f"option {level}/{option} cannot be set on a socket on the service's "
                                             "host (TCP_NODELAY, keep-alive, buffer sizes, TOS and "
                                             "TCP_USER_TIMEOUT can)")
        self._options[(level, option)] = int(value)
        self._send(set_socket_option=pb.SocketOption(level=level, option=option, value=int(value)))


class ServerSocket(_RemoteSocketBase):
    """A listening socket of a remote server: its address, and the options
    the server was opened with."""

    def __init__(self, address, reuse_port: bool = False):
        super().__init__(address)
        if self.family != socket.AF_UNIX:
            self._options[(socket.SOL_SOCKET, socket.SO_REUSEADDR)] = 1
            self._options[(socket.SOL_SOCKET, socket.SO_REUSEPORT)] = int(reuse_port)
