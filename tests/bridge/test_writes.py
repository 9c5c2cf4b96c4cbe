"""Writer against the simulator over loopback TCP, and the parsing of requests."""

from __future__ import annotations

import asyncio
import copy
import re

import pytest

from sermatec_bridge.bridge.writes import Writer, WriteRefused, coerce, parse_request
from sermatec_bridge.inverter.client import InverterClient
from sermatec_bridge.protocol import codec, tables
from sermatec_bridge.protocol.model import Command
from sermatec_bridge.simulator import Fault, Simulator

SCHEDULE = [{"start": "00:00", "end": "07:00", "period": "Valley"},
            {"start": "07:00", "end": "17:00", "period": "Flat"},
            {"start": "17:00", "end": "21:00", "period": "Peak"},
            {"start": "21:00", "end": "24:00", "period": "Valley"}]
NEW = [{"start": "00:00", "end": "06:00", "period": "Valley"},
       {"start": "06:00", "end": "24:00", "period": "Peak"}]


def tou(records: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(r["start"], r["end"], r["period"]) for r in records]


async def test_a_new_schedule_is_written_counted_and_confirmed() -> None:
    async with Simulator(pcu=609) as sim:
        sim.model.settings.update(tou_schedule=copy.deepcopy(SCHEDULE), tou_count=4)
        before = copy.deepcopy(sim.model.settings)
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=1)
            result = await writer.apply({"tou_schedule": NEW})  # no tou_count: it is 2
            assert result.ok, result.error
            assert sim.model.settings["tou_count"] == 2
            assert tou(sim.model.settings["tou_schedule"]) == tou(NEW)
            assert tou(result.changed["tou_schedule"]) == tou(NEW)
            assert sim.model.settings["grid_soc_min"] == before["grid_soc_min"]

            result = await writer.apply({"tou_schedule": SCHEDULE, "tou_count": 4})
            assert result.ok, result.error
            assert tou(sim.model.settings["tou_schedule"]) == tou(SCHEDULE)

            result = await writer.apply({"tou_schedule": SCHEDULE})
            assert result.ok and result.unchanged == ["tou_schedule"]


async def test_a_request_that_fails_half_way_reports_what_it_changed() -> None:
    async with Simulator(pcu=609) as sim:
        apply = sim.model.apply

        def ignore_0x6a(command: object, payload: bytes) -> bool:  # an inverter that drops it
            return False if getattr(command, "code", None) == 0x6A else apply(command, payload)

        sim.model.apply = ignore_0x6a  # type: ignore[method-assign]
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=0.5)
            result = await writer.apply({"grid_soc_min": 40, "off_grid_soc_min": 25})
        assert not result.ok
        assert result.error is not None and "not confirmed" in result.error
        assert result.changed == {"grid_soc_min": 40}  # 0x66 went through before 0x6a failed
        assert result.sent
        assert sim.model.settings["grid_soc_min"] == 40
        assert result.as_json()["changed"] == {"grid_soc_min": 40}


async def test_incomplete_records_are_refused_and_nothing_is_sent() -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0)
            sim.received.clear()
            result = await writer.apply({"tou_schedule": [{"start": "01:00", "end": "02:00"}]})
        assert not result.ok
        assert result.error == ("tou_schedule[0]: {'start': '01:00', 'end': '02:00'} lacks "
                                "period; allowed: records with start, end, period")
        assert 0x66 not in sim.received


# --------------------------------------------------------------------------------------
# What the user did not touch (issue 8)
# --------------------------------------------------------------------------------------

INSTALLER = {"operating_mode": 6, "grid_soc_min": 5, "grid_export_limit": 12000,
             "tariff_peak": -0.5, "anti_backflow": 0x1234}  # outside this project's policy


def record_writes(sim: Simulator) -> list[tuple[int, bytes]]:
    """The write frames (code, payload) the simulated inverter receives from now on."""
    seen: list[tuple[int, bytes]] = []
    apply = sim.model.apply

    def recording(command: Command, payload: bytes) -> bool:
        seen.append((command.code, payload))
        return apply(command, payload)

    sim.model.apply = recording  # type: ignore[method-assign]
    return seen


async def test_untouched_fields_are_kept_byte_for_byte() -> None:
    async with Simulator(pcu=609, settings=INSTALLER) as sim:
        sim.model.settings.update(tou_schedule=copy.deepcopy(SCHEDULE), tou_count=4)
        read = sim.model.payload(0x95)
        writes = record_writes(sim)
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            result = await Writer(client, min_interval=0, confirm_timeout=1).apply(
                {"command_power": 1500})
        assert result.ok, result.error
        assert result.as_json() == {"ok": True, "changed": {"command_power": 1500},
                                    "written": True}
        for key, value in INSTALLER.items():
            assert sim.model.settings[key] == value, key
        # 0x66 is 0x95's first 13 words and the 4 periods in use, command_power (word 5) new
        expected = bytearray(read[: 26 + 6 * 4])
        expected[10:12] = (1500).to_bytes(2, "big")
        assert writes == [(0x66, bytes(expected))]


async def test_a_value_the_user_changes_is_still_checked() -> None:
    async with Simulator(pcu=609, settings=INSTALLER) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=1)
            result = await writer.apply({"grid_soc_min": 4})
            assert not result.ok and result.error is not None
            assert result.error.startswith("grid_soc_min: 4 is out of range")
            result = await writer.apply({"operating_mode": 0})  # a code without a name
            assert not result.ok and result.error is not None
            assert result.error.startswith(
                "operating_mode: 0 has no known meaning, so it is not written; allowed: ")
            sim.received.clear()
            result = await writer.apply({"operating_mode": "6"})  # what the select sends
            assert result.ok and result.unchanged == ["operating_mode"], result
        assert 0x66 not in sim.received
        assert sim.model.settings["operating_mode"] == 6


# --------------------------------------------------------------------------------------
# Forced charge / discharge periods
# --------------------------------------------------------------------------------------

PERIODS = [{"start": "01:00", "end": "02:00", "reserved": "abcd"},
           {"start": "05:00", "end": "06:00", "reserved": "beef"}]


async def test_periods_keep_their_reserved_bytes_and_the_count_follows_them() -> None:
    async with Simulator(pcu=609, settings={"forced_charge_periods": PERIODS}) as sim:
        assert sim.model.settings["forced_charge_period_count"] == 2
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=1)
            result = await writer.apply({"forced_charge_periods": [
                {"start": "03:00", "end": "04:00"}]})
            assert result.ok, result.error
            assert result.changed == {"forced_charge_periods": [
                {"start": "03:00", "end": "04:00"}], "forced_charge_period_count": 1}
            shown = sim.model.values(0xA2)
            assert shown["forced_charge_period_count"] == 1, "the schedule sent is active"
            assert shown["forced_charge_periods"][:2] == [
                {"start": "03:00", "end": "04:00", "reserved": "abcd"},
                {"start": "05:00", "end": "06:00", "reserved": "beef"}]  # slot 2 as read

            result = await writer.apply({"forced_charge_periods": [
                {"start": "03:00", "end": "04:00"}], "forced_charge_period_count": 2})
            assert not result.ok
            assert result.error == ("forced_charge_period_count: 2 does not match; allowed: "
                                    "the number of forced_charge_periods records sent (1)")

            # A count alone puts the periods the inverter holds in use (the state shows
            # them: forced_charge_period_2_start), checked as if they were sent.
            result = await writer.apply({"forced_charge_period_count": 2})
            assert result.ok, result.error
            assert sim.model.values(0xA2)["forced_charge_period_count"] == 2


# --------------------------------------------------------------------------------------
# The clock button and the rate limit
# --------------------------------------------------------------------------------------


async def test_concurrent_clock_presses_send_one_frame() -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=60)
            sim.received.clear()
            sim.latency = 0.3  # a poll holds the queue slot while the presses come in
            poll = asyncio.create_task(client.query(0x0A))
            await asyncio.sleep(0.05)
            results = await asyncio.gather(*(writer.apply({"clock": "PRESS"})
                                             for _ in range(3)))
            await poll
        assert [r.ok for r in results].count(True) == 1
        assert list(sim.received).count(0x68) == 1
        for refused in (r for r in results if not r.ok):
            assert refused.error is not None and "wait 60 s more" in refused.error
            assert refused.as_json()["written"] is False


async def test_the_rate_limit_never_says_wait_0_s() -> None:
    now = [0.0]
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=10, clock=lambda: now[0])
            assert (await writer.apply({"grid_soc_min": 30})).ok
            now[0] = 9.7
            result = await writer.apply({"grid_soc_min": 40})
    assert result.error == ("grid_soc_min was written 10 s ago; wait 1 s more "
                            "(writes.min_interval is 10 s)")


@pytest.mark.parametrize("payload", [b"1", b"yes", b"", b'"PRESS"x'])
def test_the_clock_takes_only_a_press(payload: bytes) -> None:
    with pytest.raises(WriteRefused, match="is not a press; send PRESS"):
        parse_request(payload, "clock")
    assert parse_request(b"PRESS", "clock") == {"clock": "PRESS"}
    assert parse_request(b"now", "clock") == {"clock": "now"}


async def test_a_clock_value_in_a_json_request_is_checked_too() -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            result = await Writer(client, min_interval=0).apply({"clock": "2020-01-01"})
    assert not result.ok and "is not a press" in (result.error or "")
    assert 0x68 not in sim.received


async def test_the_clock_with_another_setting_is_refused_whole() -> None:
    async with Simulator(pcu=609) as sim:
        before = sim.model.settings["grid_soc_min"]
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            result = await Writer(client, min_interval=0).apply(
                {"clock": "now", "grid_soc_min": before + 5})
    assert not result.ok and result.error == "set the clock on its own"
    assert not result.sent and sim.model.settings["grid_soc_min"] == before
    assert 0x68 not in sim.received and 0x66 not in sim.received


# --------------------------------------------------------------------------------------
# Custom mode at PCU 259-499: 0x95 does not show custom_charge_tip
# --------------------------------------------------------------------------------------


async def test_custom_mode_without_a_readable_field() -> None:
    async with Simulator(pcu=300) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=1)
            result = await writer.apply({"custom_discharge_tip": True})
            assert not result.ok
            assert result.error == (
                "cannot keep custom_charge_tip as it is: 0x95 at PCU 300 does not show it, "
                "and a 0x67 write carries it; send custom_charge_tip in the same request "
                "to write 0x67")
            result = await writer.apply({"custom_charge_tip": "ON", "custom_discharge_tip": True})
        assert result.ok, result.error
        assert result.as_json()["note"] == ("custom_charge_tip: not shown by 0x95 at PCU 300, "
                                            "so not confirmed")
        assert sim.model.settings["custom_charge_tip"] is True
        assert sim.model.settings["custom_discharge_tip"] is True
        assert sim.model.settings["custom_charge_peak"] is False, "the rest is kept"


# --------------------------------------------------------------------------------------
# Results: written or not; confirmation within writes.confirm_timeout
# --------------------------------------------------------------------------------------


async def test_a_write_frame_the_link_lost_is_sent_again() -> None:
    async with Simulator(pcu=609) as sim:
        apply, lost = sim.model.apply, [1]

        def lose_the_first(command: Command, payload: bytes) -> bool:
            if lost[0]:
                lost[0] -= 1
                return False
            return apply(command, payload)

        sim.model.apply = lose_the_first  # type: ignore[method-assign]
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            result = await Writer(client, min_interval=0, confirm_timeout=5).apply(
                {"grid_soc_min": 40})
    assert result.ok, result.error
    assert sim.model.settings["grid_soc_min"] == 40
    assert list(sim.received).count(0x66) == 2


async def test_a_write_the_inverter_does_not_answer_is_refused_and_not_written() -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=0.2,
                                  retries=0) as client:
            sim.inject(Fault.SILENCE, 100)  # its read of 0x95 gets no answer
            result = await Writer(client, min_interval=0).apply({"grid_soc_min": 40})
    body = result.as_json()
    assert body["ok"] is False and body["written"] is False
    assert body["error"].startswith("inverter: no reply 0x95")
    assert sim.model.settings["grid_soc_min"] != 40 and 0x66 not in sim.received


async def test_a_write_whose_read_back_fails_says_it_was_written() -> None:
    async with Simulator(pcu=609) as sim:
        apply = sim.model.apply

        def then_silent(command: Command, payload: bytes) -> bool:
            sim.inject(Fault.SILENCE, 100)  # the inverter stops answering after the write
            return apply(command, payload)

        sim.model.apply = then_silent  # type: ignore[method-assign]
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=0.2,
                                  retries=0) as client:
            result = await Writer(client, min_interval=0, confirm_timeout=5).apply(
                {"grid_soc_min": 40})
    assert sim.model.settings["grid_soc_min"] == 40
    body = result.as_json()
    assert body["ok"] is False and body["written"] is True
    assert body["error"].startswith("written but not confirmed: reading it back failed: ")


async def test_confirm_timeout_bounds_a_slow_read_back() -> None:
    async with Simulator(pcu=609) as sim:
        apply = sim.model.apply

        def then_slow(command: Command, payload: bytes) -> bool:
            sim.latency = 3.0  # every answer after the write takes 3 s
            return apply(command, payload)

        sim.model.apply = then_slow  # type: ignore[method-assign]
        async with InverterClient("127.0.0.1", sim.port or 0, timeout=5) as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            result = await Writer(client, min_interval=0, confirm_timeout=0.5).apply(
                {"grid_soc_min": 40})
            took = loop.time() - start
    assert took < 2.0, f"the confirmation took {took:.1f} s"
    assert result.as_json()["written"] is True and not result.ok
    assert result.error == ("written but not confirmed within 0.5 s (writes.confirm_timeout): "
                            "the inverter did not answer the read-back in time")


# --------------------------------------------------------------------------------------
# Bad input (issue 7) and rounding to the step (issue 9)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "reason"), [
    (b"[" * 100_000 + b"]" * 100_000, "payload has 200000 bytes"),
    (b"[" * 8000 + b"]" * 8000, "nested too deeply"),
    (b'{"grid_soc_min": ' + b"1" * 5000 + b"}", "a number of 5000 digits"),
    (b'{"grid_soc_min": 1e400}', "1e400 is out of range"),
    (b'{"grid_soc_min": NaN}', "NaN is not a number"),
    (b'{"grid_soc_min": -Infinity}', "-Infinity is not a number"),
    (b"\xff\xfe", "not UTF-8"),
    (b"x" * 1_000_000, "payload has 1000000 bytes"),
])
def test_malformed_json_is_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(WriteRefused, match=re.escape(reason)) as refused:
        parse_request(payload)
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("payload", [b"1" * 5000, b"1e400", b"NaN", b"Infinity"])
def test_a_bad_number_on_a_setting_topic_is_refused(payload: bytes) -> None:
    with pytest.raises(WriteRefused):
        parse_request(payload, "grid_soc_min")


@pytest.mark.parametrize("text", ["٣٠", "1_5", "0x1e", "30%", " ", "1e400", "inf", "nan"])
def test_numbers_are_plain_ascii_decimals(text: str) -> None:
    why = r"grid_soc_min: .* is (not a number|out of range)"
    with pytest.raises(codec.SettingRefused, match=why):
        coerce(tables.OPERATING_MODE, 609, "grid_soc_min", text)


def test_a_long_bad_value_is_quoted_short() -> None:
    with pytest.raises(codec.SettingRefused) as refused:
        coerce(tables.OPERATING_MODE, 609, "grid_soc_min", "9" * 15_000)
    assert len(str(refused.value)) < 400
    assert "... (15002 characters)" in str(refused.value)


@pytest.mark.parametrize("request_", [
    {"grid_soc_min": [30]},
    {"grid_soc_min": {"value": 30}},
    {"grid_export_limit": True},
    {"tou_schedule": "none"},
    {"tou_schedule": [{"start": "01:00", "end": "02:00", "period": "Flat", "x": 1}]},
    {"forced_charge_periods": [{"start": "25:00", "end": "26:00"}]},
    {"operating_mode": 70000},
])
async def test_wrong_types_are_refused_before_any_read(request_: dict[str, object]) -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            sim.received.clear()
            result = await Writer(client, min_interval=0).apply(request_)
    assert not result.ok and result.as_json()["written"] is False
    assert list(sim.received) == [], "nothing is read for a malformed request"


@pytest.mark.parametrize(("request_", "changed", "note"), [
    ({"grid_soc_min": 33.5}, {"grid_soc_min": 34}, "grid_soc_min 33.5 rounded to 34 (step 1)"),
    ({"grid_soc_min": "33.4"}, {"grid_soc_min": 33}, "grid_soc_min 33.4 rounded to 33 (step 1)"),
    ({"tariff_valley": 0.25}, {"tariff_valley": 0.3},
     "tariff_valley 0.25 rounded to 0.3 (step 0.1)"),
    ({"generator_rated_power": 1250}, {"generator_rated_power": 1300},
     "generator_rated_power 1250 rounded to 1300 (step 100)"),
])
async def test_numbers_are_rounded_to_the_step(request_: dict[str, object],
                                               changed: dict[str, object], note: str) -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            result = await Writer(client, min_interval=0, confirm_timeout=1).apply(request_)
    assert result.as_json() == {"ok": True, "changed": changed, "note": note, "written": True}
    for key, value in changed.items():
        assert sim.model.settings[key] == value


async def test_rounding_happens_before_the_limits_are_checked() -> None:
    async with Simulator(pcu=609) as sim:
        async with InverterClient("127.0.0.1", sim.port or 0) as client:
            writer = Writer(client, min_interval=0, confirm_timeout=1)
            assert (await writer.apply({"grid_soc_min": 100.4})).changed == {"grid_soc_min": 100}
            result = await writer.apply({"grid_soc_min": 100.5})
    assert result.error == "grid_soc_min: 101 is out of range; allowed: from 10 to 100 %"
