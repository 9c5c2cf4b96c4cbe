"""The command line: ``sermatec-bridge`` (and ``sermatec-ess``, the community's old name).

Every failure ends in one line on stderr and a distinct exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from enum import IntEnum
from typing import Any

from . import display, log
from .inverter.client import (
    InverterBusy,
    InverterClient,
    InverterError,
    InverterTimeout,
    InverterUnreachable,
    NotOffered,
)
from .protocol import codec, frame, tables
from .protocol.model import Command, Kind

NEWEST_PCU = 609
DEFAULT_INVERTER = "10.10.100.254"


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


def _failure_of(exc: BaseException) -> Failure:
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, InverterUnreachable):
        return Failure(str(exc), Exit.UNREACHABLE)
    if isinstance(exc, InverterTimeout | InverterBusy):  # busy: accepted, never answered
        return Failure(str(exc), Exit.TIMEOUT)
    if isinstance(exc, NotOffered):
        return Failure(str(exc), Exit.UNKNOWN_COMMAND)
    if isinstance(exc, frame.BadChecksum):
        return Failure(str(exc), Exit.BAD_CHECKSUM)
    if isinstance(exc, frame.TruncatedFrame | codec.TruncatedPayload):
        return Failure(str(exc), Exit.TRUNCATED)
    if isinstance(exc, codec.SettingRefused):
        return Failure(f"refused: {exc}", Exit.REFUSED)
    if isinstance(exc, frame.FrameError | codec.CodecError):
        return Failure(str(exc), Exit.MALFORMED)
    if isinstance(exc, InverterError):
        return Failure(str(exc), Exit.ERROR)
    return Failure(f"{type(exc).__name__}: {exc}", Exit.ERROR)


# --------------------------------------------------------------------------------------
# list
# --------------------------------------------------------------------------------------


def _listing(version: int, prog: str) -> list[str]:
    effective = tables.effective_version(version)  # 991 and 998 read as 601
    since = max([v for v in tables.KNOWN_VERSIONS if v <= effective], default=0)
    out = [f"Commands at PCU version {version} (tables of PCU {since}):", ""]
    for command in tables.available(effective):
        if command.kind is Kind.QUERY or command.code == 0xBB:
            how = f"{prog} get --el {command.code:02x}"
            if command.code == 0xBB:
                how += " --registers ADDR[,ADDR...] --risk-inverter-lockup"
        else:
            how = f"({command.kind.value} write: not sent by get)"
        out.append(f"0x{command.code:02x}  {command.kind.value:<8}  {command.key:<20} "
                   f"{command.name:<45} {how}")
    out += ["", "Queries are safe to send. Writes change the inverter: the bridge sends them "
            "only when writes are enabled, validated and read back."]
    return out


async def _list(args: argparse.Namespace) -> None:
    version = args.pcu
    if version is None:
        async with _client(args) as client:
            version = client.version
    for line in _listing(version, args.prog):
        print(line)


# --------------------------------------------------------------------------------------
# get
# --------------------------------------------------------------------------------------


def _resolve(name: str) -> Command:
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


async def _get(args: argparse.Namespace) -> None:
    target = args.el or args.command
    if not target:
        raise Failure("get needs a command: get CODE|NAME or get --el CODE", Exit.USAGE)
    command = _resolve(target)
    if command.code == 0xBB:
        await _get_registers(args)
        return
    if command.kind is not Kind.QUERY:
        raise Failure(
            f"{command.label} ({command.name}) is a {command.kind.value} write; get only "
            "sends queries", Exit.UNKNOWN_COMMAND)
    async with _client(args) as client:
        readings = await client.query(command)
    _print(readings, args.json)


async def _get_registers(args: argparse.Namespace) -> None:
    if not args.risk_inverter_lockup:
        raise Failure(
            "0xbb is a two-part exchange: if part 2 does not follow part 1, the inverter "
            "stops answering until it is power-cycled. Add --risk-inverter-lockup to send it.",
            Exit.REFUSED)
    if not args.registers:
        raise Failure("0xbb needs --registers ADDR[,ADDR...] (at most 10)", Exit.USAGE)
    addresses = _parse_addresses(args.registers)
    async with _client(args) as client:
        values = await client.read_registers(addresses)
    if args.json:
        print(json.dumps({"command": "0xbb", "registers": {f"0x{a:04x}": v
                                                          for a, v in values.items()}}))
    else:
        for address, value in values.items():
            print(f"register 0x{address:04x}: {value}")


def _print(readings: Sequence[codec.Reading], as_json: bool) -> None:
    for reading in readings:
        if as_json:
            print(json.dumps(display.as_json(reading), ensure_ascii=False))
        else:
            print(f"# {reading.command.label} {reading.command.name}")
            for line in display.lines(reading):
                print(line)


def _client(args: argparse.Namespace) -> InverterClient:
    return InverterClient(args.inverter or DEFAULT_INVERTER, args.port or 8899,
                          timeout=args.timeout, retries=1)


# --------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s:,]+|0x", re.IGNORECASE)


def _hex_input(items: Sequence[str]) -> bytes:
    if list(items) == ["-"] or not items:
        items = sys.stdin.read().splitlines()
    text = _SEPARATORS.sub("", "".join(items))
    bad = re.search(r"[^0-9a-fA-F]", text)
    if bad:
        raise Failure(f"not hex: {bad.group()!r} at position {bad.start()} of the input",
                      Exit.NOT_HEX)
    if len(text) % 2:
        raise Failure("not hex: odd number of hex digits", Exit.NOT_HEX)
    return bytes.fromhex(text)


def _decode(args: argparse.Namespace) -> Exit:
    data = _hex_input(args.hex)
    reader = frame.FrameReader(verify=not args.ignore_checksum)
    first_error: Failure | None = None
    decoded = 0
    for item in reader.feed(data):
        try:
            if isinstance(item, frame.FrameError):
                raise item
            if not item.checksum_ok:
                print(f"warning: checksum carried 0x{item.checksum:02x}, computes to "
                      f"0x{item.computed_checksum:02x}; decoded anyway", file=sys.stderr)
            version = tables.effective_version(args.pcu)
            _print([codec.decode_payload(item.command, version, item.payload)], args.json)
            decoded += 1
        except Exception as exc:
            failure = _failure_of(exc)
            if isinstance(exc, frame.BadChecksum):
                failure = Failure(f"{exc} (--ignore-checksum decodes it anyway)",
                                  Exit.BAD_CHECKSUM)
            print(f"error: {failure}", file=sys.stderr)
            first_error = first_error or failure
    if reader.pending:
        pending = reader.pending
        size = frame.OVERHEAD + pending[6] if len(pending) >= 7 else frame.OVERHEAD
        failure = Failure(str(frame.TruncatedFrame(size, len(pending))), Exit.TRUNCATED)
        print(f"error: {failure}", file=sys.stderr)
        first_error = first_error or failure
    elif not decoded and first_error is None:
        raise Failure("no frame found in the input (frames start with fe 55)", Exit.MALFORMED)
    return first_error.code if first_error is not None else Exit.OK


# --------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------


async def _simulate(args: argparse.Namespace) -> None:
    from .simulator.server import run_simulator

    if args.count < 1:
        raise Failure("--count must be at least 1", Exit.USAGE)
    if args.listen_port + args.count - 1 > 65535:
        raise Failure(f"--count {args.count} from port {args.listen_port} goes past port 65535",
                      Exit.USAGE)
    await run_simulator(
        host=args.host, port=args.listen_port, count=args.count, pcu=args.pcu, model=args.model,
        serial=args.serial, latency=args.latency, chunk=args.chunk,
        garbage_rate=args.garbage_rate, bad_checksum_rate=args.bad_checksum_rate,
        drop_rate=args.drop_rate, silence_rate=args.silence_rate, seed=args.seed,
    )


# --------------------------------------------------------------------------------------
# run / daemon / config / health
# --------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Any:
    from .config import ConfigError, load_settings

    overrides = dict(overrides or {})
    if args.action != "daemon":  # flags given win over YAML and environment
        given = {"host": getattr(args, "inverter", None), "port": getattr(args, "port", None)}
        if any(given.values()):
            overrides["inverter"] = {k: v for k, v in given.items() if v is not None}
    try:
        return load_settings(args.config, overrides)
    except ConfigError as exc:
        raise Failure("invalid configuration:\n  " + "\n  ".join(exc.problems),
                      Exit.CONFIG) from None


def _run(args: argparse.Namespace) -> Exit:
    from .bridge import service

    settings = _settings(args)
    log.configure(settings.log.level if not args.debug else "debug", settings.log.format)
    return Exit.OK if service.run(settings) == 0 else Exit.ERROR


def _daemon(args: argparse.Namespace) -> Exit:
    """The seed tool's ``daemon`` command, mapped onto ``run``."""
    overrides: dict[str, Any] = {
        "inverter": {"host": args.inverter or DEFAULT_INVERTER, "port": args.port or 8899},
        "mqtt": {"host": args.mqtt_host, "port": args.mqtt_port},
    }
    if args.wait is not None:
        overrides["poll"] = {"live": args.wait}
    settings = _settings(args, overrides)
    if args.fork:
        _detach()
    log.configure(settings.log.level if not args.debug else "debug", settings.log.format)
    from .bridge import service

    return Exit.OK if service.run(settings) == 0 else Exit.ERROR


def _detach() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()


def _config(args: argparse.Namespace) -> Exit:
    from .config import masked_yaml

    print(masked_yaml(_settings(args)), end="")
    return Exit.OK


def _health(args: argparse.Namespace) -> Exit:
    from .bridge.health import check

    settings = _settings(args)
    problems = check(settings.health.file, settings.health.max_age)
    if problems:
        raise Failure("unhealthy: " + "; ".join(problems), Exit.UNHEALTHY)
    print("healthy")
    return Exit.OK


# --------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------


def _port(text: str) -> int:
    port = _integer(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (1 to 65535)")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


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


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("-i", "--inverter", metavar="HOST", default=default(None),
                        help=f"inverter address (default {DEFAULT_INVERTER}, its access point)")
    parser.add_argument("-p", "--port", type=_port, default=default(None),
                        help="inverter TCP port (default 8899)")
    parser.add_argument("-d", "--debug", action="count", default=default(0),
                        help="more logging (repeat for more)")
    parser.add_argument("--timeout", type=_positive, metavar="SECONDS", default=default(5.0),
                        help="time to wait for each reply (default 5)")


def parser(prog: str = "sermatec-bridge") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=prog, description="Talk to a Sermatec hybrid inverter over its local protocol "
        "and bridge it to Home Assistant over MQTT.")
    _global_options(top, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = top.add_subparsers(dest="action", metavar="COMMAND")

    p = sub.add_parser("list", parents=[common], help="the commands the inverter offers")
    p.add_argument("--pcu", type=_version, help="list for this PCU version, without connecting")

    p = sub.add_parser("get", parents=[common], help="send a query and print the values")
    p.add_argument("command", nargs="?", metavar="CODE|NAME", help="hex code or name")
    p.add_argument("-e", "--el", metavar="CODE", help="hex code (the seed tool's form)")
    p.add_argument("--json", action="store_true", help="one JSON object per reply")
    p.add_argument("--registers", metavar="ADDR,...", help="registers for 0xbb")
    p.add_argument("--risk-inverter-lockup", action="store_true",
                   help="allow the two-part 0xbb exchange, which blocks the inverter until "
                   "it is power-cycled if it is interrupted")

    p = sub.add_parser("decode", parents=[common], help="decode frames given in hex")
    p.add_argument("hex", nargs="*", metavar="HEX", help="hex bytes, any spacing; - for stdin")
    p.add_argument("--pcu", type=_version, default=NEWEST_PCU,
                   help=f"PCU version of the tables (default {NEWEST_PCU})")
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.add_argument("--ignore-checksum", action="store_true",
                   help="decode frames whose checksum is wrong (for analysis)")

    p = sub.add_parser("simulate", help="run a simulated inverter")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", dest="listen_port", type=_port, default=8899,
                   help="TCP port to listen on (default 8899)")
    p.add_argument("--count", type=int, default=1, metavar="N",
                   help="serve N inverters on ports PORT..PORT+N-1, serials counting up")
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

    config_help = "YAML configuration file (default: $SERMATEC_CONFIG)"
    for name, text in (("run", "run the MQTT bridge (the daemon)"),
                       ("config", "print the effective configuration, secrets masked"),
                       ("health", "check the running daemon's heartbeat (exit 0 if healthy)")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("-c", "--config", metavar="PATH", help=config_help)

    p = sub.add_parser("daemon",
                       help="the seed tool's daemon command (same as run, configured by flags)")
    p.add_argument("-m", "--host", dest="mqtt_host", required=True, help="MQTT broker host")
    p.add_argument("-t", "--port", dest="mqtt_port", type=_port, default=1883,
                   help="MQTT broker port (default 1883)")
    p.add_argument("-w", "--wait", type=_positive, default=None, metavar="SECONDS",
                   help="interval between live-data updates")
    p.add_argument("-f", "--fork", action="store_true", help="detach from the terminal")
    p.add_argument("-c", "--config", metavar="PATH", help=config_help)
    return top


Action = Callable[[argparse.Namespace], Coroutine[Any, Any, Exit | None] | Exit | None]

COMMANDS: dict[str, Action] = {
    "list": _list,
    "get": _get,
    "decode": _decode,
    "simulate": _simulate,
    "run": _run,
    "daemon": _daemon,
    "config": _config,
    "health": _health,
}


def main(argv: Sequence[str] | None = None) -> int:
    prog = "sermatec-ess" if sys.argv[0].endswith("sermatec-ess") else "sermatec-bridge"
    args = parser(prog).parse_args(argv)
    args.prog = prog
    if args.action is None:
        parser(prog).print_help()
        return Exit.USAGE
    log.configure("debug" if args.debug else "warning" if args.action != "simulate" else "info")
    try:
        result = COMMANDS[args.action](args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader has seen enough
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more may reach the pipe
        return Exit.OK
    except Exception as exc:
        failure = _failure_of(exc)
        print(f"{prog}: {failure}", file=sys.stderr)
        return failure.code
    return result if isinstance(result, Exit) else Exit.OK


if __name__ == "__main__":
    sys.exit(main())
