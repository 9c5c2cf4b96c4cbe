"""The simulated inverter, over real TCP on the loopback interface."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from sermatec_bridge.inverter.client import InverterClient
from sermatec_bridge.protocol import codec, frame, tables
from sermatec_bridge.protocol.model import Command, Kind
from sermatec_bridge.simulator import Fault, InverterModel, Simulator, run_simulator
from sermatec_bridge.simulator.server import numbered_serials

QUIET = 0.2  # how long "no answer" is waited for


class FakeClock:
    """A local wall clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2024, 6, 21, 12, 0))


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with Simulator(seed=7, clock=clock) as simulator:
        yield simulator


async def connect(sim: Simulator) -> Stream:
    assert sim.port is not None
    return await asyncio.open_connection("127.0.0.1", sim.port)


async def close(stream: Stream) -> None:
    stream[1].close()
    with contextlib.suppress(OSError):
        await stream[1].wait_closed()


async def send(stream: Stream, code: int, payload: bytes = b"") -> None:
    stream[1].write(frame.request(code, payload))
    await stream[1].drain()


async def ask(stream: Stream, code: int, payload: bytes = b"", frames: int = 1,
              wait: float = 2.0) -> list[frame.Frame]:
    """Send a request and collect ``frames`` whole frames (frame errors fail the test)."""
    await send(stream, code, payload)
    reader = frame.FrameReader()
    out: list[frame.Frame] = []
    while len(out) < frames:
        data = await asyncio.wait_for(stream[0].read(4096), wait)
        assert data, "the simulator hung up"
        for item in reader.feed(data):
            assert isinstance(item, frame.Frame), item
            out.append(item)
    return out


async def nothing_within(stream: Stream, seconds: float = QUIET) -> bool:
    """True when no byte arrives within ``seconds`` (and the connection stays open)."""
    try:
        data = await asyncio.wait_for(stream[0].read(4096), seconds)
    except TimeoutError:
        return True
    assert data, "the simulator hung up"
    return False


def queries(version: int) -> list[Command]:
    return [c for c in tables.available(version) if c.kind is Kind.QUERY]


def decoded(reply: frame.Frame, version: int = 609) -> dict[str, Any]:
    reading = codec.decode(tables.COMMANDS[reply.command], version, reply.payload)
    assert reading.extra == b""
    return reading.values


# --------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------


async def test_every_query_is_answered_and_decodable(sim: Simulator) -> None:
    stream = await connect(sim)
    for command in queries(609):
        expected = tables.replies(command, 609)
        replies = await ask(stream, command.code, frames=len(expected))
        assert [r.command for r in replies] == list(expected)
        for reply in replies:
            assert reply.source == frame.INVERTER and reply.destination == frame.APP
            assert decoded(reply) == sim.model.values(reply.command)
    assert await nothing_within(stream)  # nothing more than announced
    await close(stream)


async def test_0x95_is_answered_by_0x95_then_0x9d(sim: Simulator) -> None:
    stream = await connect(sim)
    replies = await ask(stream, 0x95, frames=2)
    assert [r.command for r in replies] == [0x95, 0x9D]
    assert decoded(replies[0])["operating_mode"] == "General"
    assert decoded(replies[0])["grid_soc_min"] == 20
    assert decoded(replies[1])["off_grid_soc_min"] == 10
    assert decoded(replies[0])["tou_schedule"][0] == {
        "start": "00:00", "end": "24:00", "period": "Flat"}
    await close(stream)


async def test_system_info_reports_the_configuration(clock: FakeClock) -> None:
    async with Simulator(pcu=991, model="10kw", serial="ST10KTEST", battery_make=22,
                         clock=clock) as sim:
        stream = await connect(sim)
        (reply,) = await ask(stream, 0x98)
        values = decoded(reply, 601)
        assert values["pcu_version"] == 991
        assert values["model_code"] == "10 kW"
        assert values["battery_make"] == "BYD high voltage"
        assert values["serial_number"] == "ST10KTEST"
        await close(stream)


async def test_third_party_client_reads_one_whole_frame_per_read(sim: Simulator) -> None:
    reader, writer = await connect(sim)
    for command in queries(609):
        writer.write(frame.request(command.code))
        await writer.drain()
        for code in tables.replies(command, 609):
            data = await asyncio.wait_for(reader.read(256), 2)
            assert frame.parse_frame(data).command == code  # exactly one whole frame
    await close((reader, writer))


@pytest.mark.parametrize("pcu", [252, 258, 259, 411, 500, 601, 603, 998])
def test_every_query_encodes_at_every_version(pcu: int) -> None:
    model = InverterModel(pcu=pcu, seed=1, clock=lambda: datetime(2024, 1, 1, 10, 0))
    version = tables.effective_version(pcu)
    for command in queries(version):
        outcome = model.handle(command.code, b"")
        assert [code for code, _ in outcome.replies] == list(tables.replies(command, version))
        for code, payload in outcome.replies:
            assert codec.decode(tables.COMMANDS[code], version, payload).extra == b""


async def test_queries_not_offered_get_no_answer(clock: FakeClock) -> None:
    async with Simulator(pcu=252, clock=clock) as sim:
        stream = await connect(sim)
        await send(stream, 0x9D)  # from PCU 259
        await send(stream, 0xB1)  # from PCU 500
        await send(stream, 0x42)  # unknown
        assert await nothing_within(stream)
        (reply,) = await ask(stream, 0x95)  # PCU 252: one frame only
        assert reply.command == 0x95
        assert await nothing_within(stream, 0.1)
        await close(stream)


# --------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------


def _settings(sim: Simulator, command: Command, **changes: Any) -> bytes:
    """A full write payload: the read-back values of its fields, with changes."""
    assert command.readback is not None
    current = sim.model.values(command.readback) | sim.model.values(0x9D)
    fields = codec.layout_of(command, 609)
    values: dict[str, Any] = {(f.group or f.key): current.get(f.group or f.key) for f in fields}
    if "tou_schedule" in values:
        values["tou_schedule"] = values["tou_schedule"][: current["tou_count"]]
        values.pop("tou_count")
    values.pop("reserved", None)
    return codec.build(command, 609, values | changes)


async def test_writes_are_unanswered_but_applied(sim: Simulator) -> None:
    stream = await connect(sim)
    await send(stream, 0x66, _settings(sim, tables.OPERATING_MODE, grid_soc_min=35,
                                       operating_mode="Energy storage"))
    await send(stream, 0x6A, _settings(sim, tables.OPERATING_MODE_2, off_grid_soc_min=25))
    await send(stream, 0x64, codec.build(tables.POWER, 609, {"inverter_on": False}))
    forced = sim.model.values(0xA2) | {
        "forced_charge_mode": True, "forced_charge_monday": False, "forced_charge_soc_limit": 90,
        "forced_charge_period_count": 1,
        "forced_charge_periods": [{"start": "01:00", "end": "05:30"}] + [
            {"start": "00:00", "end": "00:00"}] * 3,
    }
    for group in ("forced_charge_periods", "forced_discharge_periods"):
        forced[group] = [{"start": p["start"], "end": p["end"]} for p in forced[group]]
    await send(stream, 0x71, codec.build(tables.SET_FORCED_SCHEDULE, 609, forced))
    clock_values = {"year": 2025, "month": 1, "day": 2, "hour": 3, "minute": 4, "second": 5}
    await send(stream, 0x68, codec.build(tables.CLOCK, 609, clock_values))

    # no write is answered: the first frame to arrive answers the query
    (info,) = await ask(stream, 0x98)
    assert info.command == 0x98

    parameters, parameters2 = await ask(stream, 0x95, frames=2)
    assert decoded(parameters)["grid_soc_min"] == 35
    assert decoded(parameters)["operating_mode"] == "Energy storage"
    assert decoded(parameters2)["off_grid_soc_min"] == 25
    assert sim.model.values(0x95)["grid_soc_min"] == 35
    (status,) = await ask(stream, 0x0C)
    assert decoded(status)["inverter_on"] is False
    (schedule,) = await ask(stream, 0xA2)
    values = decoded(schedule)
    assert values["forced_charge_mode"] is True
    assert values["forced_charge_monday"] is False
    assert values["forced_charge_soc_limit"] == 90
    assert values["forced_charge_periods"][0]["start"] == "01:00"
    assert sim.model.now() == datetime(2025, 1, 2, 3, 4, 5)
    await close(stream)


async def test_switched_off_inverter_produces_nothing(sim: Simulator) -> None:
    stream = await connect(sim)
    assert decoded((await ask(stream, 0x0B))[0])["pv1_power"] > 0
    await send(stream, 0x64, codec.build(tables.POWER, 609, {"inverter_on": False}))
    values = decoded((await ask(stream, 0x0B))[0])
    assert values["pv1_power"] == 0 and values["dc_power"] == 0
    assert values["grid_active_power"] < 0  # the load comes from the grid
    await close(stream)


async def test_malformed_writes_are_ignored(sim: Simulator) -> None:
    stream = await connect(sim)
    await send(stream, 0x66, b"\x00\x01")  # truncated
    await send(stream, 0x68, bytes.fromhex("07e8021e0a0000"))  # 30 February
    await send(stream, 0xBA, b"\x00\x05\x00")  # count 5, one byte of pairs
    (reply, _) = await ask(stream, 0x95, frames=2)
    assert decoded(reply)["grid_soc_min"] == 20
    assert sim.model.clock_offset == timedelta()
    await close(stream)


async def test_write_that_closes_the_connection(sim: Simulator) -> None:
    stream = await connect(sim)
    values = {"grid_code": "Italy", "dc_battery_type": "Lithium", "lead_acid_capacity": 0,
              "battery_protocol": "BYD high voltage", "meter_protocol": "No meter"}
    await send(stream, 0x69, codec.build(tables.GRID_BATTERY_TYPE, 609, values))
    assert await asyncio.wait_for(stream[0].read(4096), 2) == b""  # hung up
    await close(stream)
    assert sim.model.values(0x95)["grid_code"] == "Italy"


# --------------------------------------------------------------------------------------
# Physics
# --------------------------------------------------------------------------------------

_COUNTERS = {
    0x99: ("pv_energy_today", "pv_energy_total", "consumption_today", "consumption_total",
           "savings_today", "savings_total"),
    0x9A: ("grid_export_today", "grid_export_total"),
    0x9B: ("load_energy_today", "load_energy_total"),
    0x9C: ("grid_import_today", "grid_import_total", "battery_charge_today",
           "battery_charge_total", "battery_discharge_today", "battery_discharge_total"),
}


async def test_energy_counters_never_decrease(clock: FakeClock) -> None:
    clock.now = datetime(2024, 6, 21, 0, 10)
    async with Simulator(seed=3, clock=clock) as sim:
        stream = await connect(sim)
        previous: dict[str, float] = {}
        for _ in range(24):  # one day, every hour
            current: dict[str, float] = {}
            for code, keys in _COUNTERS.items():
                values = decoded((await ask(stream, code))[0])
                current |= {key: values[key] for key in keys}
            for key, value in previous.items():
                assert current[key] >= value, key
            previous = current
            clock.advance(minutes=59)
        assert previous["pv_energy_today"] > 10
        assert previous["load_energy_today"] > 5
        assert previous["battery_charge_today"] > 1
        assert previous["battery_discharge_today"] > 1
        await close(stream)


def test_today_counters_restart_at_midnight() -> None:
    clock = FakeClock(datetime(2024, 6, 21, 12, 0))
    model = InverterModel(seed=1, clock=clock)
    clock.advance(hours=11)
    today = model.values(0x99)
    clock.advance(hours=2)
    tomorrow = model.values(0x99)
    assert today["pv_energy_today"] > 0 and tomorrow["consumption_today"] < 2
    assert tomorrow["pv_energy_total"] >= today["pv_energy_total"]


async def test_soc_follows_battery_power(sim: Simulator, clock: FakeClock) -> None:
    stream = await connect(sim)
    battery = decoded((await ask(stream, 0x0A))[0])
    assert battery["battery_state"] == "Charging" and battery["battery_current"] > 0
    clock.advance(minutes=20)
    later = decoded((await ask(stream, 0x0A))[0])
    assert later["battery_soc"] > battery["battery_soc"]

    clock.now = clock.now.replace(hour=22)  # the night: the battery covers the load
    evening = decoded((await ask(stream, 0x0A))[0])
    measurements = decoded((await ask(stream, 0x0B))[0])
    assert measurements["pv1_power"] == 0 and measurements["pv2_power"] == 0
    assert evening["battery_state"] == "Discharging" and measurements["dc_power"] < 0
    clock.advance(minutes=30)
    night = decoded((await ask(stream, 0x0A))[0])
    assert night["battery_soc"] < evening["battery_soc"]
    clock.advance(hours=8)  # never below the grid SOC lower limit
    assert decoded((await ask(stream, 0x0A))[0])["battery_soc"] >= 20
    await close(stream)


@pytest.mark.parametrize("model, three_phase", [("3kw", False), ("5kw", False),
                                                ("6kw", False), ("10kw", True)])
def test_phases(model: str, three_phase: bool) -> None:
    values = InverterModel(model=model, seed=2,
                           clock=lambda: datetime(2024, 6, 21, 12)).values(0x0B)
    voltages = [values[f"grid_{p}_voltage"] for p in "abc"]
    currents = [values[f"inverter_{p}_current"] for p in "abc"]
    if three_phase:
        assert all(215 < v < 245 for v in voltages) and len(set(voltages)) == 3
        assert all(c > 0 for c in currents) and len(set(currents)) > 1
    else:
        assert 215 < voltages[0] < 245 and currents[0] > 0
        assert voltages[1:] == [0, 0] and currents[1:] == [0, 0]


# --------------------------------------------------------------------------------------
# Registers (0xbb, 0xba)
# --------------------------------------------------------------------------------------


async def test_register_query_in_two_parts(sim: Simulator) -> None:
    stream = await connect(sim)
    (ack,) = await ask(stream, 0xBB, (2).to_bytes(2, "big"))
    assert ack.command == 0xBB and ack.payload == b"\x00\x02"
    (reply,) = await ask(stream, 0xBB, bytes.fromhex("10031234"))
    assert decoded(reply) == {"register_count": 2, "registers": [
        {"address": 0x1003, "value": 20}, {"address": 0x1234, "value": 0}]}
    # 0xba sets registers; no reply
    await send(stream, 0xBA, codec.build(tables.REGISTER_WRITE, 609, {
        "register_count": 1, "registers": [{"address": 0x1234, "value": -5}]}))
    await ask(stream, 0xBB, b"\x00\x01")
    (reply,) = await ask(stream, 0xBB, b"\x12\x34")
    assert decoded(reply)["registers"] == [{"address": 0x1234, "value": -5}]
    assert not sim.blocked
    await close(stream)


async def test_interrupted_register_query_blocks_until_power_cycle(sim: Simulator) -> None:
    stream = await connect(sim)
    await ask(stream, 0xBB, b"\x00\x03")
    await send(stream, 0x98)  # not part 2
    assert await nothing_within(stream)
    assert sim.blocked
    await send(stream, 0x0A)
    await send(stream, 0xBB, b"\x00\x01")
    assert await nothing_within(stream)
    await close(stream)

    stream = await connect(sim)  # another connection: still blocked
    await send(stream, 0x98)
    assert await nothing_within(stream)
    sim.power_cycle()
    assert not sim.blocked
    assert (await ask(stream, 0x98))[0].command == 0x98
    await close(stream)


async def test_part_2_of_the_wrong_length_blocks(sim: Simulator) -> None:
    stream = await connect(sim)
    await ask(stream, 0xBB, b"\x00\x02")
    await send(stream, 0xBB, b"\x10\x03")  # one address instead of two
    assert await nothing_within(stream)
    assert sim.blocked
    await close(stream)


async def test_registers_not_offered_before_pcu_603(clock: FakeClock) -> None:
    async with Simulator(pcu=500, clock=clock) as sim:
        stream = await connect(sim)
        await send(stream, 0xBB, b"\x00\x01")
        assert await nothing_within(stream)
        assert not sim.blocked
        await close(stream)


async def test_the_project_client_against_the_simulator(sim: Simulator) -> None:
    assert sim.port is not None
    async with InverterClient("127.0.0.1", sim.port, timeout=2) as client:
        assert client.identity is not None and client.identity.model == "5 kW"
        readings = await client.query(0x95)
        assert [r.command.code for r in readings] == [0x95, 0x9D]
        assert await client.read_registers([0x1000, 0x1001]) == {0x1000: 2300, 0x1001: 5000}
        keys = {f.group or f.key for f in tables.OPERATING_MODE.layouts[252]}
        block = {k: v for k, v in readings[0].values.items() if k in keys}
        await client.write(0x66, block | {"grid_soc_min": 40, "tou_count": 1,
                                          "tou_schedule": block["tou_schedule"][:1]})
        assert (await client.query(0x95))[0].values["grid_soc_min"] == 40


# --------------------------------------------------------------------------------------
# Delivery and faults
# --------------------------------------------------------------------------------------


async def test_chunked_replies_reassemble(clock: FakeClock) -> None:
    async with Simulator(chunk=1, chunk_pause=0.001, clock=clock) as sim:
        stream = await connect(sim)
        await send(stream, 0x95)
        reader = frame.FrameReader()
        reads, frames = 0, list[frame.Frame | frame.FrameError]()
        while len(frames) < 2:
            data = await asyncio.wait_for(stream[0].read(4096), 2)
            reads += 1
            frames += reader.feed(data)
        assert [f.command for f in frames if isinstance(f, frame.Frame)] == [0x95, 0x9D]
        assert reads > 2  # it really came in pieces
        await close(stream)


async def test_fault_garbage(sim: Simulator) -> None:
    stream = await connect(sim)
    sim.inject(Fault.GARBAGE)
    await send(stream, 0x98)
    data = await asyncio.wait_for(stream[0].read(4096), 2)
    assert not data.startswith(frame.HEADER)
    reader = frame.FrameReader()
    (item,) = reader.feed(data)
    assert isinstance(item, frame.Frame) and item.command == 0x98 and reader.skipped > 0
    (clean,) = await ask(stream, 0x98)  # the next answer is clean
    assert clean.command == 0x98
    await close(stream)


async def test_fault_bad_checksum(sim: Simulator) -> None:
    stream = await connect(sim)
    sim.inject("bad_checksum", 2)
    await send(stream, 0x95)
    reader = frame.FrameReader()
    items: list[frame.Frame | frame.FrameError] = []
    while len(items) < 2:
        items += reader.feed(await asyncio.wait_for(stream[0].read(4096), 2))
    assert all(isinstance(item, frame.BadChecksum) for item in items)
    await send(stream, 0x98)
    assert isinstance(reader.feed(await stream[0].read(4096))[0], frame.BadChecksum)
    assert (await ask(stream, 0x98))[0].command == 0x98
    await close(stream)


async def test_fault_drop(sim: Simulator) -> None:
    stream = await connect(sim)
    sim.inject(Fault.DROP)
    await send(stream, 0x98)
    assert await asyncio.wait_for(stream[0].read(4096), 2) == b""
    await close(stream)
    stream = await connect(sim)  # the next client is served normally
    assert (await ask(stream, 0x98))[0].command == 0x98
    await close(stream)


async def test_fault_silence(sim: Simulator) -> None:
    stream = await connect(sim)
    sim.inject(Fault.SILENCE)
    await send(stream, 0x98)
    assert await nothing_within(stream)
    assert (await ask(stream, 0x98))[0].command == 0x98
    await close(stream)


async def test_latency(sim: Simulator) -> None:
    stream = await connect(sim)
    sim.latency = 0.15
    loop = asyncio.get_running_loop()
    started = loop.time()
    await ask(stream, 0x98)
    assert loop.time() - started >= 0.15
    await close(stream)


async def test_fault_rates(clock: FakeClock) -> None:
    async with Simulator(seed=1, garbage_rate=1.0, silence_rate=0.5, clock=clock) as sim:
        stream = await connect(sim)
        answered = 0
        for _ in range(8):
            await send(stream, 0x0C)
            try:
                data = await asyncio.wait_for(stream[0].read(4096), 0.1)
            except TimeoutError:
                continue
            answered += 1
            assert not data.startswith(frame.HEADER)
        assert 0 < answered < 8
        await close(stream)


async def test_one_client_at_a_time(sim: Simulator) -> None:
    first = await connect(sim)
    assert (await ask(first, 0x98))[0].command == 0x98
    second = await connect(sim)
    await send(second, 0x98)
    assert await nothing_within(second)  # waits while the first is connected
    assert sim.busy and sim.clients == 1
    assert (await ask(first, 0x0C))[0].command == 0x0C
    await close(first)
    reader = frame.FrameReader()
    data = await asyncio.wait_for(second[0].read(4096), 2)
    assert [f.command for f in reader.feed(data) if isinstance(f, frame.Frame)] == [0x98]
    assert sim.clients == 2
    await close(second)


async def test_run_simulator_announces_itself(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(run_simulator(
        host="127.0.0.1", port=0, pcu=603, model="6kw", serial="ST6KCLI", latency=0.0,
        chunk=0, garbage_rate=0.0, bad_checksum_rate=0.0, drop_rate=0.0, silence_rate=0.0,
        seed=5))
    try:
        lines: list[str] = []
        for _ in range(100):
            lines += capsys.readouterr().out.splitlines()
            if any(line.startswith("simulator listening") for line in lines):
                break
            await asyncio.sleep(0.01)
        (line,) = [line for line in lines if line.startswith("simulator listening on")]
        assert line.startswith("simulator listening on 127.0.0.1:")
        assert line.endswith("(PCU 603, 6kw)")
        port = int(line.split(":")[1].split()[0])
        stream = await asyncio.open_connection("127.0.0.1", port)
        (reply,) = await ask(stream, 0x98)
        assert decoded(reply, 603)["serial_number"] == "ST6KCLI"
        await close(stream)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------------------
# Simulated time: a day's light in minutes (the demo, `simulate --sun --time-scale`)
# --------------------------------------------------------------------------------------


def test_simulated_clock_starts_at_the_sun_and_runs_faster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sermatec_bridge.simulator import model as model_module
    from sermatec_bridge.simulator import parse_time_of_day, simulated_clock

    ticks = iter([100.0, 100.0, 130.0])  # monotonic seconds: start, then +0, +30
    monkeypatch.setattr(model_module.time, "monotonic", lambda: next(ticks))
    clock = simulated_clock(parse_time_of_day("09:00"), 60)
    first, later = clock(), clock()
    assert (first.hour, first.minute) == (9, 0)
    assert later - first == timedelta(minutes=30)  # 30 s at 60x
    with pytest.raises(ValueError, match="not a time of day"):
        parse_time_of_day("25:00")
    with pytest.raises(ValueError, match="time scale"):
        simulated_clock(None, 0)


def test_a_demo_minute_moves_pv_soc_and_grid() -> None:
    """At 60x from 09:00 with the demo's 85 % SOC, one real minute is an hour of morning."""
    clock = FakeClock(datetime(2024, 6, 21, 9, 0))
    model = InverterModel(seed=5, soc=85, clock=clock)
    before = {**model.values(0x0B), **model.values(0x0A)}
    clock.advance(hours=1)  # what a demo minute simulates
    model.update()
    after = {**model.values(0x0B), **model.values(0x0A)}
    assert before["pv1_power"] > 500 and abs(after["pv1_power"] - before["pv1_power"]) > 50
    assert after["battery_soc"] >= before["battery_soc"] + 5
    assert before["grid_active_power"] == 0  # the battery takes the surplus…
    assert after["grid_active_power"] > 100  # …until it is full: then the grid does


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def test_numbered_serials_count_up_their_trailing_digits() -> None:
    assert numbered_serials("ST5K0SIM0098", 3) == ["ST5K0SIM0098", "ST5K0SIM0099",
                                                   "ST5K0SIM0100"]
    assert numbered_serials("ABC", 2) == ["ABC", "ABC2"]


async def test_simulate_count_serves_several_inverters_from_one_process() -> None:
    first = consecutive_free_ports(3)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sermatec_bridge", "simulate", "--port", str(first),
        "--count", "3", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith(f"3 simulators listening on 127.0.0.1:{first}..{first + 2} ")
        serials = []
        for port in range(first, first + 3):
            async with InverterClient("127.0.0.1", port, timeout=2) as client:
                assert client.identity is not None
                serials.append(client.identity.serial)
        assert serials == ["ST5K0SIMULATOR0001", "ST5K0SIMULATOR0002", "ST5K0SIMULATOR0003"]
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize(("args", "error"), [
    (["--count", "0"], "--count must be at least 1"),
    (["--port", "65500", "--count", "100"], "--count 100 from port 65500 goes past port 65535"),
])
def test_simulate_count_out_of_range_is_a_usage_error(args: list[str], error: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sermatec_bridge", "simulate", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(error)
