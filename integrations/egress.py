"""The one outbound guard for every URL a workspace gives us: Jira and CalDAV today, knowledge
base pages and webhooks later.

A URL must be http(s) with a host and no ``user:password@`` (credentials go in their own
fields, encrypted; a URL is stored and shown in clear). Every connection — each request, each
redirect hop, each URL a server hands back (CalDAV principal and calendar-home URLs) — goes
through :meth:`EgressPolicy.connect`: the host is resolved once, **every** address is checked,
and the socket is connected to a checked address, so no second DNS look-up can swap in another
one (DNS rebinding). TLS still verifies the certificate against the host name, and sends it as
SNI, because the HTTP library keeps the name and only the TCP connection is pinned.

Refused, always: cloud metadata addresses (AWS/GCP/Azure/Alibaba/ECS), ``0.0.0.0``/``::`` and
multicast. Refused too unless ``allow_private``: loopback, private (RFC 1918, RFC 4193),
link-local, CGNAT (RFC 6598), reserved and documentation ranges — whatever is not globally
routable (``ipaddress``'s ``is_global``) — also when wrapped in IPv4-mapped, 6to4, Teredo or
NAT64 IPv6 addresses. With OAuth install every workspace is an outside party, so private
addresses are refused; a single-workspace deployment (the operator's own ``JIRA_URL``) allows
them through the same code. ``allow`` lists networks the operator opens on purpose
(``JAMONO_EGRESS_ALLOW``), e.g. an internal Jira, or a test's fake servers on 127.0.0.1.

The HTTP sessions come from here: :meth:`EgressPolicy.requests_session` (``jira``) and
:meth:`EgressPolicy.niquests_session` (``caldav`` uses niquests when it is installed, and this
project installs it). Both libraries run over urllib3-future (niquests depends on it, and it
replaces ``urllib3`` at install), whose pluggable resolver does the connecting here. Proxy
variables and ``.netrc`` are ignored: a proxy would connect to the unchecked name, and
``.netrc`` would hand the operator's passwords to a workspace's server.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import niquests
import requests
from niquests.packages.urllib3.contrib.resolver import BaseResolver as NiquestsBaseResolver
from niquests.packages.urllib3.contrib.resolver import ProtocolResolver as NiquestsProtocol
from requests.adapters import HTTPAdapter
from urllib3.contrib.resolver import BaseResolver as Urllib3BaseResolver
from urllib3.contrib.resolver import ProtocolResolver as Urllib3Protocol

from integrations.pools import current_deadline

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> IP addresses`` (text). Raises ``socket.gaierror`` when the name does not
resolve. The default asks the system (:func:`system_resolver`); tests pass their own."""

# Instance metadata services: AWS, GCP, Azure, OpenStack (169.254.169.254), AWS IPv6
# (fd00:ec2::254), ECS task metadata (169.254.170.2), Alibaba (100.100.100.200) and Azure's
# WireServer (168.63.129.16, which is a public address).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"))

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix


class EgressRefused(Exception):
    """The policy refused a URL or an address; the message says which and why, fit for a
    workspace admin (no internal detail beyond the address their own URL led to)."""


def system_resolver(host: str, port: int) -> list[str]:
    """The system's addresses for ``host`` (``socket.getaddrinfo``), in its order, deduplicated."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def check_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host and without user information.

    Raises :class:`EgressRefused` otherwise. No DNS look-up: addresses are checked on every
    connection (:meth:`EgressPolicy.connect`).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 — raises ValueError on a port that is not a number
    except ValueError:
        raise EgressRefused("the URL is not valid; give an address such as "
                            "https://jira.example.com") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EgressRefused("give an http:// or https:// address, such as "
                            "https://jira.example.com")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise EgressRefused("the URL must not hold a user name or password: put them in "
                            "their own fields, where they are stored encrypted")
    return url


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated networks (``127.0.0.1/32, 10.20.0.0/16``; a bare address is one host).

    Raises ValueError naming the entry that is not a network."""
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP network such as 10.0.0.0/8") from None
    return tuple(networks)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, Teredo client, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses outbound connections to user-supplied URLs may reach.

    ``allow_private``: private, loopback and link-local addresses are allowed (a single
    workspace run by the operator); metadata, unspecified and multicast addresses never are.
    ``allow``: networks allowed whatever they are (the operator's explicit exceptions).
    ``resolver``: how names are resolved (see :data:`Resolver`).
    """

    allow_private: bool = False
    allow: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, repr=False)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why ``ip`` may not be reached (``"internal"``, ``"metadata"``, ``"not unicast"``),
        or ``None`` when it may."""
        inner = _embedded_ipv4(ip)
        candidates = [ip] if inner is None else [ip, inner]
        if any(address in network for address in candidates for network in self.allow
               if address.version == network.version):
            return None
        if any(address.is_unspecified or address.is_multicast for address in candidates):
            return "not unicast"
        if not self.allow_private and any(not address.is_global or address.is_reserved
                                          for address in candidates):
            return "internal"
        if any(address in METADATA_ADDRESSES for address in candidates):
            return "metadata"
        return None

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host``, every one of them allowed.

        Raises :class:`EgressRefused` when any is refused (a name with one internal address
        among public ones is refused: which one a later connection uses is not ours to pick),
        ``socket.gaierror`` when the name does not resolve.
        """
        name = host.strip("[]")
        try:
            found: list[IPAddress] = [ipaddress.ip_address(name)]
        except ValueError:
            found = [ipaddress.ip_address(a) for a in self.resolver(name, port)]
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"{name} has no address")
        for ip in found:
            reason = self.refusal(ip)
            if reason is not None:
                raise EgressRefused(_explain(name, ip, reason))
        return found

    def connect(self, host: str, port: int, timeout: float | None = None,
                socket_options: Iterable[tuple[Any, ...]] | None = None) -> socket.socket:
        """A TCP socket connected to a checked address of ``host`` (tried in order).

        ``timeout`` (seconds, per socket operation) is cut to what is left of the running
        call's :class:`~integrations.pools.Deadline`, which the socket is attached to. Raises
        :class:`EgressRefused`, ``socket.gaierror`` or the last connection's ``OSError``.
        """
        deadline = current_deadline()
        error: OSError | None = None
        for ip in self.resolve(host, port):
            sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                                 socket.SOCK_STREAM)
            try:
                for option in socket_options or ():
                    # urllib3-future tags some options with their protocol: (level, name,
                    # value, "tcp" | "udp").
                    if len(option) == 3 or str(option[3]).lower() == "tcp":
                        sock.setsockopt(*option[:3])
                wait = timeout
                if deadline is not None:
                    deadline.attach(sock)
                    wait = deadline.bound(timeout)
                sock.settimeout(wait)
                sock.connect((str(ip), port))
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        assert error is not None  # resolve() returned at least one address
        raise error

    # -- HTTP sessions ------------------------------------------------------------------------

    def pin(self, session: requests.Session) -> requests.Session:
        """Route every connection of a ``requests`` session (one a library built, such as
        ``jira``'s) through this policy; returns it."""
        adapter = _PinnedAdapter(_Urllib3Pinning(self))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.trust_env = False
        return session

    def requests_session(self) -> requests.Session:
        """A new ``requests`` session whose every connection goes through this policy."""
        return self.pin(requests.Session())

    def niquests_session(self) -> niquests.Session:
        """A new ``niquests`` session (HTTP/1.1 and 2 over TCP; HTTP/3 off, as its UDP would
        bypass :meth:`connect`) whose every connection goes through this policy."""
        session = niquests.Session(resolver=_NiquestsPinning(self), disable_http3=True)
        session.trust_env = False
        return session


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _explain(host: str, ip: IPAddress, reason: str) -> str:
    if reason == "metadata":
        return f"`{host}` is a cloud metadata address ({ip}); Jamono never connects there"
    if reason == "not unicast":
        return f"`{host}` resolves to {ip}, which is not a server's address"
    return (f"`{host}` is an internal address ({ip}); this deployment serves many workspaces "
            "and connects only to servers on the public internet")


class _Pinning:
    """A urllib3-future resolver that resolves, checks and connects through the policy.

    urllib3-future calls ``create_connection`` for every new connection (and ``getaddrinfo``
    where it only needs addresses); both go through :class:`EgressPolicy`. Stateless, so it
    is always available and never needs recycling.
    """

    implementation = "egress"

    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(None)  # type: ignore[call-arg]
        self._policy = policy

    def close(self) -> None:
        return None

    def is_available(self) -> bool:
        return True

    def recycle(self) -> _Pinning:
        return self

    def getaddrinfo(self, host: bytes | str | None, port: str | int | None,
                    family: socket.AddressFamily, type: socket.SocketKind, proto: int = 0,
                    flags: int = 0, *, quic_upgrade_via_dns_rr: bool = False) -> list:
        name = host.decode() if isinstance(host, bytes) else (host or "localhost")
        number = int(port or 0)
        return [
            (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM,
             socket.IPPROTO_TCP, "", (str(ip), number))
            for ip in self._policy.resolve(name, number)
            if family in (socket.AF_UNSPEC, (socket.AF_INET6 if ip.version == 6
                                              else socket.AF_INET))
        ]

    def create_connection(self, address: tuple[str, int], timeout: Any = None,
                          source_address: tuple[str, int] | None = None,
                          socket_options: Any = None,
                          socket_kind: socket.SocketKind = socket.SOCK_STREAM,
                          **_: Any) -> socket.socket:
        if socket_kind != socket.SOCK_STREAM:
            raise OSError("only TCP connections pass the egress guard")
        host, port = address
        seconds = float(timeout) if isinstance(timeout, int | float) else None
        return self._policy.connect(host, port, seconds, socket_options)


class _Urllib3Pinning(_Pinning, Urllib3BaseResolver):
    protocol = Urllib3Protocol.CUSTOM


class _NiquestsPinning(_Pinning, NiquestsBaseResolver):
    protocol = NiquestsProtocol.CUSTOM


class _PinnedAdapter(HTTPAdapter):
    """A ``requests`` adapter whose connection pools connect through a pinning resolver."""

    def __init__(self, resolver: _Urllib3Pinning) -> None:
        self._resolver = resolver  # before super().__init__, which builds the pool manager
        super().__init__()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, resolver=self._resolver,
                                 **pool_kwargs)
