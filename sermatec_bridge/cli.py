"""The command line: ``sermatec-bridge`` (and ``sermatec-ess``, the community's old name).

Every failure ends in one line on stderr and a distinct exit code, never a traceback.
Modules are imported by the commands that use them: ``--help``, ``list``, ``decode`` and,
with nothing configured, ``get`` start without asyncio, structlog or the configuration
(see benchmarks/cli_startup.py).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import math
import os
import re
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from .capture import Chunk
    from .config import Settings
    from .homezone import HomeZone
    from .inverter.blocking import BlockingClient
    from .protocol.codec import Reading
    from .protocol.frame import Frame, FrameError
    from .protocol.model import Command
    from .supervisor import AppStart

NEWEST_PCU = 609
DEFAULT_INVERTER = "10.10.100.254"
DEFAULT_PORT = 8899
ENV_PREFIX = "SERMATEC_"  # config.ENV_PREFIX, without importing the configuration code


class Exit(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    UNREACHABLE = 3
    TIMEOUT = 4
    UNKNOWN_COMMAND = 5
    BAD_CHECKSUM = 6
    TRUNCATED = 7
    NOT_HEX = 8
    MALFORMED = 9
    REFUSED = 10
    CONFIG = 11
    UNHEALTHY = 12
    INTERRUPTED = 130


class Failure(Exception):
    """A user-facing failure: one line and an exit code."""

    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.code = code


# The project's exceptions by class name: matched along the MRO, so that this module
# need not import the (slow) modules that raise them.
_EXIT_OF = {
    "InverterUnreachable": Exit.UNREACHABLE,
    "InverterTimeout": Exit.TIMEOUT,
    "InverterBusy": Exit.TIMEOUT,  # accepted the connection, never answered
    "NotOffered": Exit.UNKNOWN_COMMAND,
    "MalformedReply": Exit.MALFORMED,  # a reply that does not fit the tables
    "BadChecksum": Exit.BAD_CHECKSUM,
    "TruncatedFrame": Exit.TRUNCATED,
    "TruncatedPayload": Exit.TRUNCATED,
    "SettingRefused": Exit.REFUSED,
    "FrameError": Exit.MALFORMED,
    "CodecError": Exit.MALFORMED,
    "InverterError": Exit.ERROR,
}


def _failure_of(exc: BaseException) -> Failure:
    if isinstance(exc, Failure):
        return exc
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("sermatec_bridge.") and cls.__name__ in _EXIT_OF:
            code = _EXIT_OF[cls.__name__]
            return Failure(f"refused: {exc}" if code is Exit.REFUSED else str(exc), code)
    return Failure(f"{type(exc).__name__}: {exc}", Exit.ERROR)


# --------------------------------------------------------------------------------------
# Configuration: defaults < YAML (--config / $SERMATEC_CONFIG) < environment < flags
# --------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None,
              any_inverter: bool = False) -> Settings:
    """The configuration in effect; ``any_inverter``: none configured means the default one.

    ``get``, ``list`` and ``health`` work without a configured inverter: the first two
    then talk to the inverter's own access point (10.10.100.254), the last needs none.
    In a Home Assistant app the app's options come over the environment, as for ``run``.
    """
    from . import supervisor
    from .config import NO_HOST, NO_INVERTER, ConfigError, load_settings

    overrides = dict(overrides or {})
    flags = {"host": getattr(args, "inverter", None), "port": getattr(args, "port", None)}
    if args.action != "daemon" and any(flags.values()):  # flags win over YAML and environment
        overrides["inverter"] = {k: v for k, v in flags.items() if v is not None}
    config = getattr(args, "config", None)
    try:
        if supervisor.active(os.environ):
            _, options = supervisor.options(os.environ)
            inverter = {**options.get("inverter", {}), **overrides.get("inverter", {})}
            overrides = {**options, **overrides} | ({"inverter": inverter} if inverter else {})
        return load_settings(config, overrides)
    except ConfigError as exc:
        no_host = any(p in (NO_INVERTER, NO_HOST) for p in exc.problems)
        problems = exc.problems
        if any_inverter and no_host:
            fallback = {**overrides, "inverter": {**overrides.get("inverter", {}),
                                                  "host": DEFAULT_INVERTER}}
            try:
                return load_settings(config, fallback)
            except ConfigError as again:
                problems = again.problems
        # One line per problem, each naming its setting (one problem: one line in all).
        separator = " " if len(problems) == 1 else "\n  "
        raise Failure("invalid configuration:" + separator + separator.join(problems),
                      Exit.CONFIG) from None


def _configured(args: argparse.Namespace) -> bool:
    """Whether a YAML file or an environment variable may say anything (the app's image
    sets some: its options are read then)."""
    return bool(getattr(args, "config", None)) or any(
        name.upper().startswith(ENV_PREFIX) and value for name, value in os.environ.items())


def _target(args: argparse.Namespace) -> dict[str, Any]:
    """How to reach the inverter that ``get`` and ``list --from-inverter`` ask: the first
    configured one, as keyword arguments of the client.

    With nothing configured the flags say it all, on the client's defaults (the same as
    the configuration's, which a test holds): the configuration code, 130 ms of start-up,
    is then not even imported.
    """
    if not _configured(args):
        timeout = {"timeout": args.timeout} if args.timeout else {}
        return {"host": args.inverter or DEFAULT_INVERTER, "port": args.port or DEFAULT_PORT,
                **timeout}
    settings = _settings(args, any_inverter=True)
    # the first the bridge dials (one that dials in has no address to ask)
    chosen = next((i for i in settings.all_inverters() if i.host is not None), None)
    if chosen is None:
        unlisted = settings.unlisted
        return {"host": DEFAULT_INVERTER, "port": DEFAULT_PORT,
                "timeout": args.timeout or unlisted.timeout, "retries": unlisted.retries}
    return {"host": chosen.host, "port": chosen.port, "name": chosen.name,
            "timeout": args.timeout or chosen.timeout, "retries": chosen.retries}


@contextlib.contextmanager
def _connected(args: argparse.Namespace, asked: Sequence[Command] | None = None,
               ) -> Iterator[BlockingClient]:
    """A client of the inverter, connected, for the queries ``asked`` (None: every one).

    The inverter's identity (0x98) tells which tables decode its replies. Where no reply
    asked depends on the PCU version, the identity it gave lately will do (see
    inverter/identity_cache.py), which saves a round trip to the inverter; otherwise it is
    asked, and remembered. An identity query that goes unanswered is named as such.
    A one-shot command asks one thing at a time: a blocking client serves it, which spares
    it asyncio (see inverter/blocking.py).
    """
    from .inverter import identity_cache
    from .inverter.blocking import BlockingClient
    from .inverter.core import InverterTimeout
    from .protocol import tables
    from .protocol.model import Kind

    target = _target(args)
    host, port = target["host"], target["port"]
    known = None
    if asked and all(c.kind is Kind.QUERY and c is not tables.SYSTEM_INFO
                     and tables.same_at_every_version(c) for c in asked):
        known = identity_cache.load(host, port)
        if known is not None and any(c.layout(known.version) is None for c in asked):
            known = None  # asking again may show a firmware that offers them
    if sys.stderr.isatty():  # as the community's tool did, for the reader, not for scripts
        print(f"asking the inverter at {_where(host, port)}", file=sys.stderr)
    client = BlockingClient(**target, identity=known)
    try:
        try:
            client.connect()
        except InverterTimeout as exc:
            labels = " ".join(c.label for c in asked) if asked else "the other queries"
            raise _timeout_failure(client, exc, "the identity query" if labels == "0x98" else
                                   f"0x98 is the identity query, sent before {labels}"
                                   ) from None
        if known is None:
            assert client.identity is not None
            identity_cache.store(host, port, client.identity)
        yield client
    except Exception:
        if known is not None:  # perhaps it was wrong: the next run asks
            identity_cache.forget(host, port)
        raise
    finally:
        client.close()


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _timeout_failure(client: BlockingClient, exc: Exception, context: str) -> Failure:
    from .protocol.frame import BadChecksum

    bad = client.last_bad_frame
    if isinstance(bad, BadChecksum):  # the inverter answered, but never with a sound frame
        return Failure(f"{exc}; what came had bad checksums, the last: {bad}",
                       Exit.BAD_CHECKSUM)
    return Failure(f"{exc} ({context})", Exit.TIMEOUT)


# --------------------------------------------------------------------------------------
# list
# --------------------------------------------------------------------------------------


def _listing(version: int, prog: str) -> list[str]:
    from .protocol import tables
    from .protocol.model import Kind

    effective = tables.effective_version(version)  # 991 and 998 read as 601
    since = max([v for v in tables.KNOWN_VERSIONS if v <= effective], default=0)
    out = [f"Commands at PCU version {version} (tables of PCU {since}):", ""]
    for command in tables.available(effective):
        if command.kind is Kind.QUERY or command.code == 0xBB:
            how = f"{prog} get {command.code:02x}"
            if command.code == 0xBB:
                how += " --registers ADDR[,ADDR...] --risk-inverter-lockup"
        else:
            how = f"({command.kind.value} write: not sent by get)"
        out.append(f"0x{command.code:02x}  {command.kind.value:<8}  {command.key:<20} "
                   f"{command.name:<45} {how}")
    out += ["", "Queries are safe to send. Writes change the inverter: the bridge sends them "
            "only when writes are enabled, validated and read back."]
    return out


def _list(args: argparse.Namespace) -> Exit:
    if args.from_inverter:
        return _list_from_inverter(args)
    for line in _listing(NEWEST_PCU if args.pcu is None else args.pcu, args.prog):
        print(line)
    return Exit.OK


def _list_from_inverter(args: argparse.Namespace) -> Exit:
    from .protocol.tables import SYSTEM_INFO

    with _connected(args, [SYSTEM_INFO]) as client:
        assert client.identity is not None
        version = client.identity.reported_version
    for line in _listing(version, args.prog):
        print(line)
    return Exit.OK


# --------------------------------------------------------------------------------------
# get
# --------------------------------------------------------------------------------------


def _resolve(name: str) -> Command:
    from .protocol import tables

    command = tables.find(name)
    if command is None:
        raise Failure(f"unknown command {name!r} (see the list command)", Exit.UNKNOWN_COMMAND)
    return command


def _parse_addresses(text: str) -> list[int]:
    try:
        return [int(part, 0) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        raise Failure(f"--registers takes numbers such as 0x4065,0x4119, not {text!r}",
                      Exit.USAGE) from None


def _queries(targets: Sequence[str]) -> list[Command] | None:
    """The commands asked for, checked before connecting; None means every query."""
    from .protocol.model import Kind

    if [t.lower() for t in targets] == ["all"]:
        return None
    commands = [_resolve(t) for t in targets]
    for command in commands:
        if command.code == 0xBB and len(commands) > 1:
            raise Failure("0xbb (two-part register query) is sent on its own: get bb "
                          "--registers ADDR,... --risk-inverter-lockup", Exit.USAGE)
        if command.kind is not Kind.QUERY and command.code != 0xBB:
            raise Failure(f"{command.label} ({command.name}) is a {command.kind.value} "
                          "write; get only sends queries", Exit.REFUSED)
    return commands


def _get(args: argparse.Namespace) -> Exit:
    targets = args.el + args.commands
    if not targets:
        raise Failure("get needs a command: get CODE|NAME [...], get all, or get --el CODE",
                      Exit.USAGE)
    commands = _queries(targets)
    if commands is not None and commands[0].code == 0xBB:
        return _get_registers(args)
    from .inverter.core import InverterTimeout
    from .protocol import tables
    from .protocol.model import Kind

    with _connected(args, commands) as client:
        assert client.identity is not None
        if commands is None:
            commands = [c for c in tables.available(client.version) if c.kind is Kind.QUERY]
        shown: set[int] = set()  # each reply once: 0x95 brings 0x9d, asked or not
        for command in commands:
            if set(tables.replies(command, client.version)) <= shown:
                continue
            try:  # the identity was asked just now if 0x98 is asked
                readings = ([client.identity.reading] if command is tables.SYSTEM_INFO
                            else client.query(command))
            except InverterTimeout as exc:
                raise _timeout_failure(client, exc, f"asked: {command.label} "
                                       f"{command.name}") from None
            _print([r for r in readings if r.command.code not in shown], args.json)
            shown.update(r.command.code for r in readings)
    return Exit.OK


def _get_registers(args: argparse.Namespace) -> Exit:
    if not args.risk_inverter_lockup:
        raise Failure(
            "0xbb is a two-part exchange: if part 2 does not follow part 1, the inverter "
            "stops answering until it is power-cycled. Add --risk-inverter-lockup to send it.",
            Exit.REFUSED)
    if not args.registers:
        raise Failure("0xbb needs --registers ADDR[,ADDR...] (at most 10)", Exit.USAGE)
    addresses = _parse_addresses(args.registers)
    from .protocol.tables import REGISTER_QUERY

    with _connected(args, [REGISTER_QUERY]) as client:
        values = client.read_registers(addresses)
    if args.json:
        import json

        print(json.dumps({"command": "0xbb", "registers": {f"0x{a:04x}": v
                                                          for a, v in values.items()}}))
    else:
        for address, value in values.items():
            print(f"register 0x{address:04x}: {value}")
    return Exit.OK


def _print(readings: Iterable[Reading], as_json: bool) -> None:
    from . import display

    for reading in readings:
        if as_json:
            import json

            print(json.dumps(display.as_json(reading), ensure_ascii=False))
        else:
            print(f"# {reading.command.label} {reading.command.name}")
            _print_lines(reading)


def _print_lines(reading: Reading) -> None:
    from . import display

    for line in display.lines(reading):
        print(line)


# --------------------------------------------------------------------------------------
# cloud show / cloud set
# --------------------------------------------------------------------------------------

READ_BACK_WITHIN = 60.0  # seconds for the inverter to answer again after 0x9f


def _cloud(args: argparse.Namespace) -> Exit:
    return _cloud_show(args) if args.cloud_action == "show" else _cloud_set(args)


def _network(client: BlockingClient) -> dict[str, Any]:
    """What 0xb1 tells, without the router password (it is never shown)."""
    (reading,) = client.query(0xB1)
    values = reading.values
    port = str(values["cloud_port"])
    return {"wifi_mode": values["wifi_mode"], "router_ssid": values["router_ssid"],
            "cloud_server": values["cloud_server"],
            "cloud_port": int(port) if port.isdigit() else port}


def _server_of(network: dict[str, Any]) -> str:
    return f"{network['cloud_server']}:{network['cloud_port']}"


def _cloud_show(args: argparse.Namespace) -> Exit:
    from .protocol.tables import ROUTER_AND_CLOUD_QUERY

    with _connected(args, [ROUTER_AND_CLOUD_QUERY]) as client:
        network = _network(client)
    if args.json:
        import json

        print(json.dumps(network, ensure_ascii=False))
    else:
        print(f"cloud server: {_server_of(network)}")
        print(f"Wi-Fi mode: {network['wifi_mode']}")
        print(f"router SSID: {network['router_ssid']}")
        print("router password: not shown")
    return Exit.OK


def _ipv4(text: str) -> str:
    """``cloud set`` HOST: the inverter's field holds an IPv4 address (no name, no IPv6)."""
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 address (the inverter's cloud server field holds one, "
            "e.g. 192.168.1.10)") from None


def _cloud_set(args: argparse.Namespace) -> Exit:
    import time

    from .inverter.core import InverterTimeout, InverterUnreachable
    from .protocol.tables import CLOUD, ROUTER_AND_CLOUD_QUERY

    wanted = f"{args.host}:{args.cloud_port}"
    if not args.yes:
        raise Failure(f"cloud set makes the inverter drop its connection and dial {wanted} "
                      "as its cloud server from now on, instead of its vendor's (which then "
                      "hears from it only if a bridge relays it: cloud.upstream); add --yes "
                      f"to do it ({args.prog} cloud show shows the server now)", Exit.REFUSED)
    with _connected(args, [ROUTER_AND_CLOUD_QUERY, CLOUD]) as client:
        before = _network(client)
        if _server_of(before) == wanted:
            print(f"cloud server: {wanted} already; nothing to do")
            return Exit.OK
        where = f" -i {_where(client.host, client.port)}" if args.inverter else ""
        print(f"cloud server was {_server_of(before)}; to go back: {args.prog} cloud set "
              f"{before['cloud_server']} {before['cloud_port']} --yes{where}")
        client.write(CLOUD, {"cloud_server": args.host, "cloud_port": str(args.cloud_port)})
        print(f"wrote {wanted}: the inverter drops this connection (and its cloud link) now, "
              "and dials the new server; reading it back once it answers again...",
              flush=True)
        deadline = time.monotonic() + READ_BACK_WITHIN
        while True:
            try:
                after = _network(client)
                break
            except (InverterUnreachable, InverterTimeout) as exc:  # it restarts its network
                if time.monotonic() > deadline:
                    raise Failure(f"wrote {wanted}, but the inverter did not answer again "
                                  f"within {READ_BACK_WITHIN:g} s ({exc}); check with "
                                  f"{args.prog} cloud show", Exit.UNREACHABLE) from None
                time.sleep(1.0)
    if _server_of(after) != wanted:
        raise Failure(f"wrote {wanted}, but the inverter reports {_server_of(after)}",
                      Exit.ERROR)
    print(f"cloud server now: {wanted} (read back)")
    return Exit.OK


# --------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s:,]+|0x", re.IGNORECASE)


def _decode_input(items: Sequence[str]) -> Iterable[Chunk]:
    """What ``decode`` reads: a capture file (or one on stdin), or hex as one stream."""
    from pathlib import Path

    from .capture import Chunk, kind, read

    if not items:
        raise Failure("decode needs hex bytes, a capture file, or - to read either from "
                      "stdin", Exit.USAGE)
    if list(items) == ["-"]:
        data = sys.stdin.buffer.read()
    elif len(items) == 1 and Path(items[0]).is_file():
        try:
            data = Path(items[0]).read_bytes()
        except OSError as exc:
            raise Failure(f"cannot read {items[0]}: {exc.strerror}", Exit.ERROR) from None
    else:
        if len(items) == 1 and re.search(r"[^\s0-9a-fA-Fx:,]", items[0]) and (
                "." in items[0] or "/" in items[0]):
            raise Failure(f"{items[0]}: no such file, and not hex either", Exit.USAGE)
        return [Chunk(None, _hex(" ".join(items)))]
    if kind(data) is not None:
        return read(data)
    if re.search(rb"[^\x20-\x7e\s]", data):
        raise Failure(f"{'stdin' if items == ['-'] else items[0]} is neither a capture (pcap, "
                      "pcapng, netcat -o hex dump) nor hex text", Exit.MALFORMED)
    return [Chunk(None, _hex(data.decode("latin-1")))]


def _hex(text: str) -> bytes:
    text = _SEPARATORS.sub("", text)
    if not text:
        raise Failure("decode got no hex bytes", Exit.USAGE)
    bad = re.search(r"[^0-9a-fA-F]", text)
    if bad:
        raise Failure(f"not hex: {bad.group()!r} at position {bad.start()} of the input",
                      Exit.NOT_HEX)
    if len(text) % 2:
        raise Failure("not hex: odd number of hex digits", Exit.NOT_HEX)
    return bytes.fromhex(text)


def _preview(data: bytes | bytearray) -> str:
    return data[:16].hex() + ("…" if len(data) > 16 else "")


class _Skips:
    """Runs of bytes the frame reader skipped, merged where they touch."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, bytearray, str | None]] = []

    def __call__(self, at: int, data: bytes, reason: str | None) -> None:
        if self.runs and self.runs[-1][0] + len(self.runs[-1][1]) == at:
            self.runs[-1][1].extend(data)
        else:
            self.runs.append((at, bytearray(data), reason))


class _Stream:
    """One byte stream being decoded: the hex input, or one side of a captured connection.

    Frames are read plain or RC4; after a hole in a capture the reader starts afresh (a
    frame the hole cut is reported as truncated), offsets counting the missing bytes too.
    """

    def __init__(self, name: str | None, verify: bool) -> None:
        self.name, self.verify = name, verify
        self.skips = _Skips()
        self.length = 0  # bytes of the stream so far, with those missing from the capture
        self.items = 0  # frames and frame errors found
        self.time: float | None = None
        self._start_reader()

    def _start_reader(self) -> None:
        from .protocol.frame import FrameReader

        base = self.length
        self.reader = FrameReader(verify=self.verify, rc4=True,
                                  on_skip=lambda at, data, why: self.skips(base + at, data, why))

    def feed(self, chunk: Chunk) -> list[Frame | FrameError]:
        out = []
        if chunk.missing:
            out += self.reader.finish()
            print(f"warning: {self.name}: {chunk.missing} bytes at offset {self.length} are "
                  "not in the capture", file=sys.stderr)
            self.length += chunk.missing
            self._start_reader()
        self.time = self.time if chunk.time is None else chunk.time
        out += self.reader.feed(chunk.data)
        self.length += len(chunk.data)
        self.items += len(out)
        return out

    def finish(self) -> list[Frame | FrameError]:
        out = self.reader.finish()
        self.items += len(out)
        return out


def _decode(args: argparse.Namespace) -> Exit:
    from .capture import CaptureError, TruncatedCapture, timestamp
    from .protocol import frame

    streams: dict[str | None, _Stream] = {}
    errors: list[Failure] = []
    decoded = 0

    def error(failure: Failure, stream: _Stream) -> None:
        where = f"{stream.name}: " if stream.name else ""
        print(f"error: {where}{failure}", file=sys.stderr)
        errors.append(failure)

    def show(item: Frame | FrameError, stream: _Stream) -> None:
        nonlocal decoded
        try:
            if isinstance(item, frame.FrameError):
                raise item
            if not item.checksum_ok:
                print(f"warning: checksum carried 0x{item.checksum:02x}, computes to "
                      f"0x{item.computed_checksum:02x}; decoded anyway", file=sys.stderr)
            context: dict[str, Any] = {"rc4": True} if item.rc4 else {}
            if stream.name is not None:
                context |= {"time": None if stream.time is None else timestamp(stream.time),
                            "stream": stream.name,
                            "direction": "requester → inverter" if item.is_request
                            else "inverter → requester" if item.is_reply else None}
            _decode_frame(item, args, context)
            decoded += 1
        except BrokenPipeError:  # `decode ... | head`: main() ends quietly
            raise
        except Exception as exc:
            failure = _failure_of(exc)
            if isinstance(exc, frame.BadChecksum):
                failure = Failure(f"{exc} (--ignore-checksum decodes it anyway)",
                                  Exit.BAD_CHECKSUM)
            error(failure, stream)

    damage: CaptureError | None = None
    try:
        for chunk in _decode_input(args.hex):
            stream = streams.get(chunk.stream)
            if stream is None:
                stream = streams[chunk.stream] = _Stream(chunk.stream, not args.ignore_checksum)
            for item in stream.feed(chunk):
                show(item, stream)
    except CaptureError as exc:
        damage = exc
    for stream in streams.values():
        for item in stream.finish():
            show(item, stream)
    for stream in streams.values():
        if stream.name is None or stream.items:  # captures: only streams with frames
            _report_skips(stream, decoded or errors, error)
    silent = sum(1 for s in streams.values() if s.name is not None and not s.items)
    if silent and (decoded or errors):
        print(f"note: {silent} other TCP stream directions of the capture carry no frames",
              file=sys.stderr)
    if damage is not None:  # said last, and what the exit code tells
        errors.insert(0, Failure(f"damaged capture: {damage}; everything before it is shown "
                                 "above", Exit.TRUNCATED if isinstance(damage, TruncatedCapture)
                                 else Exit.MALFORMED))
        print(f"error: {errors[0]}", file=sys.stderr)
    if not decoded and not errors:
        raise Failure("no frame found in the input (frames start with fe 55, or 75 9a "
                      "when RC4-encrypted)", Exit.MALFORMED)
    return errors[0].code if errors else Exit.OK


def _report_skips(stream: _Stream, found_any: object,
                  error: Callable[[Failure, _Stream], None]) -> None:
    """Everything a stream's reader skipped: an error where it looked like a frame."""
    runs = stream.skips.runs
    last_frame_end = stream.length - sum(len(run) for at, run, _ in runs
                                         if at + len(run) == stream.length)
    where_ = f"{stream.name}: " if stream.name else ""
    for at, run, reason in runs:
        if reason is not None:  # it began like a frame
            error(Failure(f"skipped {len(run)} bytes at offset {at} ({_preview(run)}): "
                          f"{reason}", Exit.MALFORMED), stream)
        elif found_any:
            where = "after the last frame" if at == last_frame_end and at else f"at offset {at}"
            print(f"warning: {where_}skipped {len(run)} bytes {where}, not part of any frame: "
                  f"{_preview(run)}", file=sys.stderr)


def _decode_frame(item: Frame, args: argparse.Namespace, context: dict[str, Any]) -> None:
    """A reply decoded with the tables; a request named, with its payload if it has one.

    ``context`` says where a frame of a capture came from (time, stream, direction) and
    whether it was RC4-encrypted: JSON carries it as keys, text as a line before the frame
    and a mark in its heading.
    """
    from .protocol import codec, frame, tables

    version = tables.effective_version(args.pcu)
    if not args.json and "stream" in context:
        print("  ".join(str(context[key]) for key in ("time", "stream", "direction")
                        if context[key] is not None))
    rc4 = ", RC4" if item.rc4 else ""
    if item.is_reply:
        answer = codec.decode_payload(item.command, version, item.payload)
        if args.json:
            import json

            from . import display

            print(json.dumps(display.as_json(answer) | context, ensure_ascii=False))
        else:
            print(f"# {answer.command.label} {answer.command.name}"
                  + (" (RC4)" if item.rc4 else ""))
            _print_lines(answer)
        return
    if not item.is_request:
        raise frame.MalformedFrame(
            f"frame for command 0x{item.command:02x} goes from 0x{item.source:02x} to "
            f"0x{item.destination:02x}: neither a reply (0x{frame.INVERTER:02x} → "
            f"0x{frame.APP:02x}) nor a request (0x{frame.APP:02x} → 0x{frame.INVERTER:02x})")
    command = tables.COMMANDS.get(item.command)
    if command is None:
        raise codec.CodecError(f"unknown command 0x{item.command:02x} (a request)")
    what = "query" if command.replies else f"{command.kind.value} write"
    reading = None
    if item.payload and command.is_write and command.layout(version) is not None:
        reading = codec.decode(command, version, item.payload)
    summary = f"{what} {command.label}, " + (
        "no payload" if not item.payload else f"{len(item.payload)} payload bytes")
    if args.json:
        import json

        from .display import MASK

        secret = reading is not None and any(f.secret for f in reading.command.layout(version)
                                             or ())
        out: dict[str, Any] = {"command": command.label, "name": command.name,
                               "request": summary, **context,
                               "payload": MASK if secret else item.payload.hex()}
        if reading is not None:
            from . import display

            out["fields"] = display.as_json(reading)["fields"]
        print(json.dumps(out, ensure_ascii=False))
        return
    print(f"# {command.label} {command.name} (request{rc4})")
    print(summary + ("" if reading is not None or not item.payload
                     else f": {item.payload.hex()}"))
    if reading is not None:
        from . import display

        for line in display.lines(reading):
            print(line)


# --------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------


async def _simulate(args: argparse.Namespace) -> None:
    from .simulator.model import SettingsError, simulated_clock
    from .simulator.server import run_simulator

    if args.count < 1:
        raise Failure("--count must be at least 1", Exit.USAGE)
    if args.rc4 and args.cloud is None:
        raise Failure("--rc4 is the cloud link's encryption: it needs --cloud HOST:PORT",
                      Exit.USAGE)
    if args.cloud is not None and (given := sorted(
            {"cloud_server", "cloud_port"} & {key for key, _ in args.settings})):
        raise Failure(f"--cloud sets the cloud server; leave out --set {given[0]}", Exit.USAGE)
    if args.listen_port + args.count - 1 > 65535:
        raise Failure(f"--count {args.count} from port {args.listen_port} goes past port 65535",
                      Exit.USAGE)
    try:
        await run_simulator(
            host=args.host, port=args.listen_port, count=args.count, pcu=args.pcu,
            model=args.model,
            serial=args.serial, latency=args.latency, chunk=args.chunk,
            garbage_rate=args.garbage_rate, bad_checksum_rate=args.bad_checksum_rate,
            drop_rate=args.drop_rate, silence_rate=args.silence_rate, seed=args.seed,
            settings=dict(args.settings), clock=simulated_clock(args.sun, args.time_scale),
            cloud=args.cloud, rc4=args.rc4,
        )
    except SettingsError as exc:
        raise Failure(f"--set: {exc}", Exit.USAGE) from None


def _assignment(text: str) -> tuple[str, Any]:
    """KEY=VALUE of ``simulate --set``: VALUE as JSON (numbers, lists), else as text."""
    import json

    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _server(text: str) -> tuple[str, int]:
    """``simulate --cloud``: HOST:PORT ([ADDRESS]:PORT for IPv6)."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, _port(port)


# --------------------------------------------------------------------------------------
# run / daemon / config / health
# --------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> Exit:
    from . import supervisor

    if supervisor.active(os.environ):  # a Home Assistant app: the Supervisor configures it
        return _app(args)
    settings = _settings(args)
    return _bridge(settings, _home_zone(), args.debug)


def _app_start() -> AppStart:
    """What the Home Assistant app runs with; each problem is one line."""
    from . import supervisor
    from .config import ConfigError

    try:
        return supervisor.start(os.environ)
    except ConfigError as exc:
        raise Failure("invalid app options: " + "; ".join(exc.problems), Exit.CONFIG) from None
    except supervisor.SupervisorError as exc:
        raise Failure(str(exc), Exit.ERROR) from None


def _app(args: argparse.Namespace) -> Exit:
    app = _app_start()
    mqtt = app.settings.mqtt
    return _bridge(app.settings, app.zone, args.debug, options=str(app.options_file),
                   broker=f"{mqtt.host}:{mqtt.port} (from {app.broker_from})",
                   home_assistant=app.home_assistant or "unknown",
                   time_platform=app.settings.homeassistant.time_platform)


def _home_zone() -> HomeZone:
    from . import homezone

    try:
        return homezone.current()
    except homezone.ZoneError as exc:
        raise Failure(f"time zone: {exc}", Exit.CONFIG) from None


def _bridge(settings: Settings, zone: HomeZone, debug: int, **facts: str) -> Exit:
    """Run the bridge in the home's time zone; the log says which zone that is."""
    import structlog

    from . import homezone, log
    from .bridge import service

    homezone.use(zone)
    log.configure(settings.log.level if not debug else "debug", settings.log.format)
    structlog.get_logger("sermatec_bridge").info(
        "starting", time_zone=zone.label(), zone_from=zone.source,
        local_time=zone.now().isoformat(timespec="seconds"), **facts)
    return Exit.OK if service.run(settings) == 0 else Exit.ERROR


def _daemon(args: argparse.Namespace) -> Exit:
    """The community tool's ``daemon`` command, mapped onto ``run``."""
    from pathlib import Path

    from .config import runtime_dir

    overrides: dict[str, Any] = {
        "inverter": {"host": args.inverter or DEFAULT_INVERTER, "port": args.port or DEFAULT_PORT,
                     "timeout": args.timeout},
        "mqtt": {"host": args.mqtt_host, "port": args.mqtt_port},
    }
    if args.wait is not None:
        overrides["poll"] = {"live": args.wait}
    settings = _settings(args, overrides)
    zone = _home_zone()
    if args.fork:
        _detach(Path(args.pid_file or runtime_dir() / "sermatec-bridge.pid"),
                Path(args.log_file or runtime_dir() / "sermatec-bridge.log"), args.prog)
    return _bridge(settings, zone, args.debug)


def _detach(pid_file: Path, log_file: Path, prog: str) -> None:
    """Become a daemon: a new session, no terminal, logs to ``log_file``, a PID file.

    The command returns once the daemon has written its PID file, and prints the PID.
    """
    try:
        running = int(pid_file.read_text().strip())
        os.kill(running, 0)
    except (OSError, ValueError):
        pass  # no PID file, or a stale one
    else:
        raise Failure(f"already running as PID {running} ({pid_file})", Exit.ERROR)
    try:
        for parent in {pid_file.parent, log_file.parent}:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        pid_file.write_text("")
    except OSError as exc:
        raise Failure(f"cannot detach: {exc}", Exit.ERROR) from None
    ready, told = os.pipe()
    if os.fork():  # the command: wait for the daemon's PID, show it, leave
        os.close(told)
        pid = os.read(ready, 32).decode().strip()
        if not pid:
            raise Failure(f"the daemon did not start; see {log_file}", Exit.ERROR)
        print(f"{prog} running in the background as PID {pid}\n"
              f"  log: {log_file}\n  PID file: {pid_file}\n  stop it: kill {pid}")
        sys.stdout.flush()
        os._exit(Exit.OK)
    os.close(ready)
    os.setsid()
    if os.fork():  # the session leader leaves: the daemon can never get a terminal back
        os._exit(0)
    pid_file.write_text(f"{os.getpid()}\n")
    atexit.register(lambda: pid_file.unlink(missing_ok=True))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.write(told, f"{os.getpid()}\n".encode())
    os.close(told)


def _config(args: argparse.Namespace) -> Exit:
    from . import supervisor
    from .config import masked_yaml

    if supervisor.active(os.environ):  # what the app runs with: its broker from the Supervisor
        app = _app_start()
        print(f"# the Home Assistant app's options ({app.options_file}); the MQTT broker from "
              f"{app.broker_from}", file=sys.stderr)
        print(masked_yaml(app.settings), end="")
        return Exit.OK
    print(masked_yaml(_settings(args)), end="")
    return Exit.OK


def _health(args: argparse.Namespace) -> Exit:
    from .bridge.health import check

    settings = _settings(args, any_inverter=True)  # only the heartbeat is read
    verdict = check(settings.heartbeat_file, settings.health.max_age)
    if verdict.problems:
        raise Failure(f"unhealthy: {verdict}", Exit.UNHEALTHY)
    print(f"healthy: {verdict}")
    return Exit.OK


# --------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------


def _port(text: str) -> int:
    port = _integer(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1 to 65535)")
    return port


def _address(text: str) -> tuple[str, int | None]:
    """``-i``: HOST, HOST:PORT, [IPV6] or [IPV6]:PORT (a bare IPv6 address has no port)."""
    host, port = text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            raise argparse.ArgumentTypeError(f"{text!r} is not HOST, HOST:PORT or [IPV6]:PORT")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host.strip():
        raise argparse.ArgumentTypeError(f"{text!r} names no host")
    try:
        return host, None if port is None else _port(port)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def _timeout(text: str) -> float:
    seconds = _positive(text)
    if not (math.isfinite(seconds) and 0.01 <= seconds <= 3600):
        raise argparse.ArgumentTypeError(f"{text} is not a timeout from 0.01 to 3600 seconds")
    return seconds


def _time_of_day(text: str) -> Any:
    from .simulator.model import parse_time_of_day

    try:
        return parse_time_of_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time_scale(text: str) -> float:
    scale = _positive(text)
    if scale > 86400:
        raise argparse.ArgumentTypeError(f"{text} is more than 86400 (a day per second)")
    return scale


def _version(text: str) -> int:
    version = _integer(text)
    if version < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a PCU version")
    return version


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line too, like every other error."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        self.exit(Exit.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """``--version``, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from . import __version__

        print(f"{parser.prog} {__version__}")
        parser.exit()


def _options(parser: argparse.ArgumentParser, *which: str, top: bool = False) -> None:
    """Shared options, on the commands they apply to.

    The top-level parser takes them too (``sermatec-ess -i HOST get ...``, the community
    tool's order), without listing them in its help.
    """
    def kw(default: Any, text: str) -> dict[str, Any]:
        return {"default": default if top else argparse.SUPPRESS,
                "help": argparse.SUPPRESS if top else text}

    if not top:  # what main() lets through when given before the command
        parser.set_defaults(takes=(parser.get_default("takes") or frozenset()) | set(which))

    if "inverter" in which:
        parser.add_argument("-i", "--inverter", type=_address, metavar="HOST[:PORT]", **kw(
            None, "inverter address (default: the configured one, else "
            f"{DEFAULT_INVERTER}, the inverter's own access point)"))
        parser.add_argument("-p", "--port", type=_port, **kw(
            None, "inverter TCP port (default: the configured one, else 8899)"))
    if "timeout" in which:
        parser.add_argument("--timeout", type=_timeout, metavar="SECONDS", **kw(
            None, "seconds to wait for each reply (default: the configured one, else 5)"))
    if "config" in which:
        parser.add_argument("-c", "--config", metavar="PATH", **kw(
            None, "YAML configuration file (default: $SERMATEC_CONFIG)"))
    if "debug" in which:
        parser.add_argument("-d", "--debug", action="count", **kw(
            0, "show the log (debug level) on stderr"))


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The commands, each given its arguments when it is chosen: a run parses with one of
    them, and adding the arguments of all of them took longer than the rest of a one-shot
    read (see benchmarks/cli_startup.py). ``--help`` lists them by their help alone."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._arguments: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def add(self, name: str, arguments: Callable[[argparse.ArgumentParser], None],
            **kw: Any) -> None:
        self.add_parser(name, **kw)
        self._arguments[name] = arguments

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        arguments = self._arguments.pop(values[0], None)
        if arguments is not None:
            arguments(self.choices[values[0]])
        super().__call__(parser, namespace, values, option_string)


def parser(prog: str = "sermatec-bridge") -> argparse.ArgumentParser:
    top = _Parser(
        prog=prog, description="Talk to a Sermatec hybrid inverter over its local protocol "
        "and bridge it to Home Assistant over MQTT. Settings come from a YAML file "
        "(--config or $SERMATEC_CONFIG) and SERMATEC_* environment variables; "
        "'%(prog)s config' shows them.")
    top.add_argument("--version", action=_Version)
    _options(top, "inverter", "timeout", "config", "debug", top=True)
    commands = top.add_subparsers(dest="action", metavar="COMMAND", action=_Commands)
    assert isinstance(commands, _Commands)
    commands.add("list", _list_arguments,
                 help="the commands of the protocol, queries and writes marked",
                 description="List the commands of the newest protocol tables, or of a PCU "
                 "firmware version. Needs no inverter unless --from-inverter.")
    commands.add("get", _get_arguments, help="send queries and print the values",
                 description="Send one or more queries in one connection and print what "
                 "the inverter answers. The inverter is the configured one (YAML file, "
                 "SERMATEC_INVERTER__HOST) unless -i says otherwise, else "
                 f"{DEFAULT_INVERTER}.")
    commands.add("cloud", _cloud_arguments,
                 help="show or set the inverter's cloud server (where its cloud link goes)",
                 description="The inverter's cloud link: in station mode it dials its cloud "
                 "server (the vendor's, unless changed) and answers what that server asks. "
                 "'show' reads the server, the Wi-Fi mode and SSID (never the router "
                 "password); 'set' points the link elsewhere, e.g. at the bridge's "
                 "cloud.listen_port.")
    commands.add("decode", _decode_arguments, help="decode frames given in hex, offline",
                 description="Decode captured frames, replies and the app's requests, "
                 "whatever their spacing and chunking. Everything skipped or rejected is "
                 "reported on stderr.")
    commands.add("simulate", _simulate_arguments, help="run a simulated inverter")
    commands.add("run", lambda p: _options(p, "inverter", "config", "debug"),
                 help="run the MQTT bridge (the container's command)")
    commands.add("config", lambda p: _options(p, "inverter", "config"),
                 help="print the configuration in effect, secrets masked")
    commands.add("health", lambda p: _options(p, "config"),
                 help="check the running bridge's heartbeat (exit 0 if healthy); needs no "
                 "inverter")
    commands.add("daemon", _daemon_arguments,
                 help="the community tool's daemon command: run, configured by flags")
    return top


def _list_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pcu", type=_version, help=f"PCU firmware version (default "
                       f"{NEWEST_PCU}, the newest tables)")
    which.add_argument("--from-inverter", action="store_true",
                       help="ask the inverter for its PCU version first")
    _options(p, "inverter", "timeout", "config", "debug")


def _get_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("commands", nargs="*", metavar="CODE|NAME",
                   help="hex codes or names (see list), or 'all' for every query")
    p.add_argument("-e", "--el", metavar="CODE", action="append", default=[],
                   help="a hex code (the community tool's form of the same); repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per reply")
    p.add_argument("--registers", metavar="ADDR,...", help="registers for 0xbb")
    p.add_argument("--risk-inverter-lockup", action="store_true",
                   help="allow the two-part 0xbb exchange, which blocks the inverter until "
                   "it is power-cycled if it is interrupted")
    _options(p, "inverter", "timeout", "config", "debug")


def _cloud_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="cloud_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="the cloud server and port, the Wi-Fi mode and "
                              "SSID (0xb1; never the router password)")
    show.add_argument("--json", action="store_true", help="one JSON object")
    change = actions.add_parser(
        "set", help="point the inverter's cloud link at HOST:PORT (0x9f)",
        description="Write the cloud server (0x9f): the inverter drops the connection and "
        "dials HOST:PORT from then on. Prints the server before, and the command that "
        "restores it; reads the new one back once the inverter answers again.")
    change.add_argument("host", type=_ipv4, metavar="HOST", help="IPv4 address, e.g. the "
                        "bridge's (the vendor's: 8.209.71.159)")
    change.add_argument("cloud_port", type=_port, metavar="PORT",
                        help="TCP port (the bridge's cloud.listen_port; the vendor's: 19042)")
    change.add_argument("--yes", action="store_true", help="do it (without: refused)")
    for action in (show, change):
        _options(action, "inverter", "timeout", "config", "debug")


def _decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hex", nargs="*", metavar="HEX", help="hex bytes, any spacing; - for stdin")
    p.add_argument("--pcu", type=_version, default=NEWEST_PCU,
                   help=f"PCU version of the tables (default {NEWEST_PCU})")
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.add_argument("--ignore-checksum", action="store_true",
                   help="decode frames whose checksum is wrong (for analysis)")


def _simulate_arguments(p: argparse.ArgumentParser) -> None:
    _options(p, "debug")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", dest="listen_port", type=_port, default=8899,
                   help="TCP port to listen on (default 8899)")
    p.add_argument("--count", type=int, default=1, metavar="N",
                   help="serve N inverters on ports PORT..PORT+N-1, serials counting up "
                   "(with --cloud, each one dials in)")
    p.add_argument("--pcu", type=_version, default=NEWEST_PCU, help="PCU version to report")
    p.add_argument("--model", default="5kw", choices=["3kw", "5kw", "6kw", "10kw"])
    p.add_argument("--serial", default="ST5K0SIMULATOR0001", help="serial number")
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                   help="delay before each reply")
    p.add_argument("--chunk", type=int, default=0, metavar="BYTES",
                   help="write replies in pieces of this many bytes")
    p.add_argument("--garbage-rate", type=float, default=0.0, metavar="P",
                   help="share of replies preceded by garbage bytes")
    p.add_argument("--bad-checksum-rate", type=float, default=0.0, metavar="P",
                   help="share of replies with a wrong checksum")
    p.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                   help="share of requests answered by closing the connection")
    p.add_argument("--silence-rate", type=float, default=0.0, metavar="P",
                   help="share of requests left unanswered")
    p.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    p.add_argument("--set", dest="settings", type=_assignment, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="start with this setting, in the keys and units of the MQTT state "
                        "and raw codes for coded values (repeatable), e.g. "
                        "--set operating_mode=6 --set grid_soc_min=5; the network state "
                        "too: wifi_mode, router_ssid, router_password, cloud_server, "
                        "cloud_port")
    p.add_argument("--cloud", type=_server, metavar="HOST:PORT",
                   help="station mode: also dial this cloud server every second, like the "
                   "inverter, and answer the requests it sends (only addresses of this host "
                   "or a private network are dialled)")
    p.add_argument("--rc4", action="store_true",
                   help="speak RC4-encrypted frames on the cloud link (default: plain)")
    p.add_argument("--sun", type=_time_of_day, default=None, metavar="HH:MM",
                   help="start the simulated day at this time of day (default: now)")
    p.add_argument("--time-scale", type=_time_scale, default=1.0, metavar="FACTOR",
                   help="simulated time runs this many times faster (60: a minute is an hour)")


def _daemon_arguments(p: argparse.ArgumentParser) -> None:
    _options(p, "debug")
    p.set_defaults(takes=p.get_default("takes") | {"inverter", "timeout"})  # before 'daemon'
    p.add_argument("-i", "--inverter", type=_address, default=argparse.SUPPRESS,
                   metavar="HOST[:PORT]", help=f"inverter address (default {DEFAULT_INVERTER})")
    p.add_argument("-p", dest="port", type=_port, default=argparse.SUPPRESS,
                   help="inverter TCP port (default 8899; --port is the MQTT broker's)")
    p.add_argument("-m", "--host", dest="mqtt_host", required=True, help="MQTT broker host")
    p.add_argument("-t", "--port", dest="mqtt_port", type=_port, default=1883,
                   help="MQTT broker port (default 1883)")
    p.add_argument("-w", "--wait", type=_positive, default=None, metavar="SECONDS",
                   help="interval between live-data updates")
    p.add_argument("-f", "-k", "--fork", action="store_true",
                   help="detach: run in the background, log to --log-file, print the PID")
    where = "in $XDG_RUNTIME_DIR/sermatec-bridge, else ~/.local/state/sermatec-bridge"
    p.add_argument("--pid-file", metavar="PATH",
                   help=f"with -f: where the PID goes (default: sermatec-bridge.pid {where})")
    p.add_argument("--log-file", metavar="PATH",
                   help=f"with -f: where the logs go (default: sermatec-bridge.log {where})")
    _options(p, "config")


Action = Callable[[argparse.Namespace], Coroutine[Any, Any, Exit | None] | Exit | None]

COMMANDS: dict[str, Action] = {
    "list": _list,
    "get": _get,
    "cloud": _cloud,
    "decode": _decode,
    "simulate": _simulate,
    "run": _run,
    "daemon": _daemon,
    "config": _config,
    "health": _health,
}


_SHARED_FLAGS = {"inverter": {"inverter": "-i/--inverter", "port": "-p/--port"},
                 "timeout": {"timeout": "--timeout"}, "config": {"config": "-c/--config"},
                 "debug": {"debug": "-d/--debug"}}


def _misplaced(args: argparse.Namespace) -> list[str]:
    """Shared options given before a command that does not take them."""
    takes: frozenset[str] = getattr(args, "takes", frozenset())
    return [flag for group, flags in _SHARED_FLAGS.items() if group not in takes
            for dest, flag in flags.items() if getattr(args, dest, None)]


def main(argv: Sequence[str] | None = None) -> int:
    prog = "sermatec-ess" if sys.argv[0].endswith("sermatec-ess") else "sermatec-bridge"
    args = parser(prog).parse_args(argv)
    args.prog = prog
    if args.action is None:
        parser(prog).print_help()
        return Exit.USAGE
    if misplaced := _misplaced(args):
        print(f"{prog}: {', '.join(misplaced)} does not apply to {args.action} "
              f"(see {prog} {args.action} --help)", file=sys.stderr)
        return Exit.USAGE
    if getattr(args, "inverter", None) is not None:
        args.inverter, port = args.inverter
        if port is not None and args.port not in (None, port):
            print(f"{prog}: -i {_where(args.inverter, port)} and -p {args.port} name two "
                  f"ports; give one (see {prog} {args.action} --help)", file=sys.stderr)
            return Exit.USAGE
        args.port = port or args.port
    quiet: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    asks = args.action in ("get", "cloud") or getattr(args, "from_inverter", False)
    if args.action == "simulate" or asks:
        from . import log

        if args.action == "simulate" or args.debug:
            log.configure("debug" if args.debug else "info")
        else:  # problems end in one line on stderr: no log line comes before it
            quiet = log.on_demand("error")
    try:
        with quiet:
            result = COMMANDS[args.action](args)
            if isinstance(result, Coroutine):
                import asyncio

                result = asyncio.run(result)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the pipe
        return Exit.OK
    except OSError as exc:
        failure = _failure_of(exc)
        if args.action == "simulate" and exc.errno:  # its listening socket
            where = exc.filename or f"{args.host}:{args.listen_port}"
            failure = Failure(f"cannot listen on {where}: {os.strerror(exc.errno)}",
                              Exit.ERROR)
        print(f"{prog}: {failure}", file=sys.stderr)
        return failure.code
    except Exception as exc:
        failure = _failure_of(exc)
        print(f"{prog}: {failure}", file=sys.stderr)
        return failure.code
    return result if isinstance(result, Exit) else Exit.OK


if __name__ == "__main__":
    sys.exit(main())
