"""Where a webhook may be sent: its URL's form and the addresses a delivery must never reach. Pure rules.

A subscription's URL is chosen by whoever holds an admin token, but the
request is made by the control plane from inside the network, so without
these rules a URL could reach the cloud metadata service, a database on
localhost or a Triton admin port (TorchServe's CVE-2023-43654 was exactly
that). Every address a host name resolves to is classified; one refused
address refuses the URL. IPv6 forms that carry an IPv4 address (mapped,
compatible, NAT64, 6to4, Teredo) are judged by that IPv4 address. An admin
may allow networks or host names (``TargetAllowlist``).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from controlplane.domain.limits import has_control_characters
from controlplane.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,62}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,62}[a-z0-9_])?)*\.?$"
)
DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressClass(enum.StrEnum):
    """Why an address is refused as a webhook target."""

    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    PRIVATE = "private"
    SHARED = "shared (CGNAT)"
    MULTICAST = "multicast"
    UNSPECIFIED = "unspecified"
    RESERVED = "reserved"


def _v4(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _v6(cidr: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(cidr)


# First match wins: the more specific networks come first.
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, AddressClass], ...] = (
    (_v4("0.0.0.0/32"), AddressClass.UNSPECIFIED),
    (_v4("0.0.0.0/8"), AddressClass.RESERVED),
    (_v4("127.0.0.0/8"), AddressClass.LOOPBACK),
    (_v4("169.254.0.0/16"), AddressClass.LINK_LOCAL),
    (_v4("10.0.0.0/8"), AddressClass.PRIVATE),
    (_v4("172.16.0.0/12"), AddressClass.PRIVATE),
    (_v4("192.168.0.0/16"), AddressClass.PRIVATE),
    (_v4("100.64.0.0/10"), AddressClass.SHARED),
    (_v4("224.0.0.0/4"), AddressClass.MULTICAST),
    (_v4("240.0.0.0/4"), AddressClass.RESERVED),
)
_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, AddressClass], ...] = (
    (_v6("::/128"), AddressClass.UNSPECIFIED),
    (_v6("::1/128"), AddressClass.LOOPBACK),
    (_v6("fe80::/10"), AddressClass.LINK_LOCAL),
    (_v6("fec0::/10"), AddressClass.PRIVATE),
    (_v6("fc00::/7"), AddressClass.PRIVATE),
    (_v6("ff00::/8"), AddressClass.MULTICAST),
)
# IPv6 networks whose last 32 bits are an IPv4 address the packet ends up at.
_EMBEDDING_V4_AT_END = (
    _v6("::ffff:0:0/96"),  # IPv4-mapped
    _v6("::/96"),  # IPv4-compatible (deprecated, still routed by some stacks)
    _v6("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
    _v6("64:ff9b::/96"),  # NAT64, well-known prefix
    _v6("64:ff9b:1::/48"),  # NAT64, local-use prefix
)
_SIX_TO_FOUR = _v6("2002::/16")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo client), if any."""
    if address.teredo is not None:
        return address.teredo[1]
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    if any(address in net for net in _EMBEDDING_V4_AT_END):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify_address(address: IPAddress) -> AddressClass | None:
    """Why ``address`` may not be a webhook target, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(address.compressed.split("%")[0])
        for net6, kind in _REFUSED_V6:
            if address in net6:
                return kind
        inner = embedded_ipv4(address)
        return classify_address(inner) if inner is not None else None
    for net4, kind in _REFUSED_V4:
        if address in net4:
            return kind
    return None


@dataclass(frozen=True)
class TargetAllowlist:
    """Networks and host names an admin allows although their addresses would be refused."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, value: str) -> TargetAllowlist:
        """From comma-separated CIDRs, addresses and host names; InvalidInput names a malformed entry."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in value.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not _HOST_NAME.fullmatch(entry):
                raise InvalidInput(
                    f"webhook allowlist entry {raw.strip()!r} is neither a network, an address nor a "
                    "host name",
                    code="invalid_webhook_allowlist",
                )
            hosts.add(entry.rstrip("."))
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """Whether ``address`` (or the IPv4 address it carries) is in an allowed network."""
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            inner = embedded_ipv4(address)
            if inner is not None:
                candidates.append(inner)
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)


def refusal(address: IPAddress, allowlist: TargetAllowlist) -> AddressClass | None:
    """Why a delivery may not connect to ``address`` under ``allowlist``, or None when it may."""
    if allowlist.allows_address(address):
        return None
    return classify_address(address)


@dataclass(frozen=True)
class WebhookUrl:
    """A checked webhook URL: scheme, host (lower case, no brackets), port and the rest."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_is_address(self) -> bool:
        return _is_address(self.host)

    @property
    def host_header(self) -> str:
        """The Host header the receiver expects (the port only when it is not the scheme's)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def pinned(self, address: IPAddress) -> str:
        """The URL with ``address`` in place of the host: the request goes to the address that was checked."""
        literal = f"[{address.compressed}]" if address.version == 6 else address.compressed
        return f"{self.scheme}://{literal}:{self.port}{self.path}"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def _invalid(url: str, why: str) -> InvalidInput:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return InvalidInput(f"webhook URL {shown!r} {why}", code="invalid_webhook_url")


def parse_webhook_url(url: str) -> WebhookUrl:
    """``url`` checked for form (http or https, a host, no credentials or fragment); InvalidInput if not."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(
            f"webhook URL is longer than {MAX_URL_LENGTH} characters", code="invalid_webhook_url"
        )
    if has_control_characters(url) or any(c.isspace() for c in url):
        raise _invalid(url, "holds a space or control character")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _invalid(url, "must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _invalid(url, "may not hold credentials; the signature authenticates the sender")
    if parts.fragment:
        raise _invalid(url, "may not have a fragment")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _invalid(url, "has no host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise _invalid(url, "has an invalid port") from None
    if not _is_address(host):
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise _invalid(url, "has an invalid host name") from None
        if not _HOST_NAME.fullmatch(host):
            raise _invalid(url, "has an invalid host name")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return WebhookUrl(scheme=scheme, host=host, port=port, path=path)
