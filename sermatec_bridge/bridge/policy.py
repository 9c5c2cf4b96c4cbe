"""What a requester that is not the bridge may ask of the inverter.

Clients of the app proxy (``bridge/proxy.py``) are such requesters, and so is the vendor
cloud through the relay (``bridge/cloud.py``). They all ask this module, in two steps:
:meth:`Policy.check` says whether a request may reach the inverter at all,
:meth:`Policy.forward` runs it in the inverter's queue slot. What passes:

- queries, except 0xb1, whose reply carries the router password in clear;
- settings writes, when the requester's policy allows them (the app proxy's follows
  ``writes.enabled``), checked and applied exactly as a write from Home Assistant:
  only settings the tables declare, within their limits, ``requires_off`` honoured,
  rate limited, and confirmed by reading back (:meth:`~.writes.Writer.apply_block`);
- the reset 0x70, the network writes (0x94, 0x9e, 0x9f, 0xa3, 0xb0), the register
  commands (0xba, 0xbb) and 0xb1 only when a setting names them (``proxy.allow``); a
  write among them must still fit the tables and their limits.

Everything else is :class:`Refused`, with a reason for the metrics and a detail for the
log, and gets no reply: the requester sees an inverter that did not understand.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ..inverter.client import NotOffered, Session
from ..protocol import codec, frame
from ..protocol.model import Command, Kind
from ..protocol.tables import COMMANDS, GUARDED_QUERIES, SETTINGS_WRITES
from .writes import Writer, WriteResult


class Refused(Exception):
    """A request that does not reach the inverter; the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason  # the metrics label
        super().__init__(detail)


@dataclass(frozen=True)
class Forwarded:
    """What a request that passed did: its reply frames, and for a settings write its
    result (it may still have been refused, or not confirmed)."""

    replies: list[frame.Frame]
    write: WriteResult | None = None


@dataclass(frozen=True)
class Policy:
    """The commands a requester may send beyond plain queries, by code."""

    allow: frozenset[int] = frozenset()
    setting: str = "proxy.allow"  # where the user names them, for refusal messages
    writes_off: str = "settings writes are off (writes.enabled)"  # why one is refused

    @classmethod
    def of(cls, names: Iterable[str], *, settings_writes: bool, setting: str = "proxy.allow",
           writes_off: str = "settings writes are off (writes.enabled)") -> Policy:
        """From command labels as the configuration gives them (``0xb1``), plus every
        settings write when ``settings_writes``."""
        allowed = {int(name, 16) for name in names}
        return cls(frozenset(allowed | (SETTINGS_WRITES if settings_writes else set())),
                   setting, writes_off)

    def check(self, request: frame.Frame) -> Command:
        """The command of ``request`` if it may reach the inverter; :class:`Refused` if not."""
        if not request.is_request:
            raise Refused("not a request", f"a frame from 0x{request.source:02x} to "
                          f"0x{request.destination:02x}, not from the app to the inverter")
        command = COMMANDS.get(request.command)
        if command is None:
            raise Refused("unknown command", f"0x{request.command:02x} is not in the tables")
        plain_query = command.kind is Kind.QUERY and command.code not in GUARDED_QUERIES
        if plain_query or command.code in self.allow:
            return command
        raise Refused("not allowed", f"{command.label} ({command.name}): {self._why(command)}")

    def _why(self, command: Command) -> str:
        if command.code in SETTINGS_WRITES:
            return self.writes_off
        if command.code == 0xB1:
            return f"its reply carries the Wi-Fi password; only when {self.setting} names it"
        return f"a {command.kind.value} command; only when {self.setting} names it"

    async def forward(self, session: Session, request: frame.Frame, command: Command,
                      writer: Writer) -> Forwarded:
        """Run a request that passed :meth:`check`, inside the inverter's queue slot."""
        if command.code in SETTINGS_WRITES:
            try:
                result = await writer.apply_block(session, command, request.payload)
            except NotOffered as exc:
                raise Refused("not offered", str(exc)) from exc
            return Forwarded([], result)
        if command.is_write:
            try:
                values = codec.decode(command, session.version, request.payload).values
                codec.validate(command, session.version, values)
            except codec.CodecError as exc:
                secret = any(f.secret for f in codec.layout_of(command, session.version))
                why = "does not fit the tables (not shown: it carries a password)" if secret \
                    else str(exc)
                raise Refused("malformed write", f"{command.label}: {why}") from exc
        return Forwarded(await session.relay(request))


def allowed_address(address: str, networks: Iterable[str]) -> bool:
    """Whether a client at ``address`` may connect: any when ``networks`` is empty."""
    nets = [ipaddress.ip_network(n) for n in networks]
    if not nets:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
    return any(ip.version == net.version and ip in net for net in nets)
