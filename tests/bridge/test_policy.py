"""The policy for foreign requesters, and the limits every app proxy client shares."""

from __future__ import annotations

import resource

import pytest

from sermatec_bridge.bridge import proxy
from sermatec_bridge.bridge.policy import (
    SETTINGS_WRITES,
    Policy,
    Refused,
    allowed_address,
)
from sermatec_bridge.bridge.proxy import Budget, client_cap
from sermatec_bridge.protocol import frame
from sermatec_bridge.protocol.tables import COMMANDS, Kind

GUARDED = {0x70, 0x94, 0x9E, 0x9F, 0xA3, 0xB0, 0xBA, 0xBB, 0xB1}


def request(code: int) -> frame.Frame:
    return frame.parse_frame(frame.request(code))


def test_by_default_only_queries_pass() -> None:
    policy = Policy.of([], settings_writes=False)
    passed = set()
    for code in COMMANDS:
        try:
            passed.add(policy.check(request(code)).code)
        except Refused as exc:
            assert exc.reason == "not allowed"
    queries = {c for c, cmd in COMMANDS.items() if cmd.kind is Kind.QUERY}
    assert passed == queries - {0xB1, 0xBB}


def test_settings_writes_pass_when_on_and_the_guarded_ones_only_when_named() -> None:
    writes = Policy.of([], settings_writes=True)
    assert {c for c in COMMANDS if c in writes.allow} == SETTINGS_WRITES
    assert {0x64, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x71} == SETTINGS_WRITES
    for code in GUARDED:
        with pytest.raises(Refused, match=r"only when proxy\.allow names it"):
            writes.check(request(code))
    named = Policy.of(["0xb1", "0x70"], settings_writes=False)
    assert named.check(request(0xB1)).code == 0xB1
    assert named.check(request(0x70)).code == 0x70
    with pytest.raises(Refused, match=r"0x9f .*only when proxy\.allow"):
        named.check(request(0x9F))
    with pytest.raises(Refused, match=r"settings writes are off \(writes\.enabled\)"):
        named.check(request(0x66))


def test_what_is_not_a_request_of_a_known_command_is_refused() -> None:
    policy = Policy.of([], settings_writes=True)
    with pytest.raises(Refused) as refused:
        policy.check(frame.parse_frame(frame.reply(0x0A)))
    assert refused.value.reason == "not a request"
    with pytest.raises(Refused) as refused:
        policy.check(request(0x42))
    assert refused.value.reason == "unknown command"


def test_the_budget_never_banks_more_than_its_burst() -> None:
    now = 0.0
    budget = Budget(rate=10.0, burst=20, clock=lambda: now)
    assert sum(budget.take() for _ in range(100)) == 20
    now += 59.0  # a minute without a request
    assert sum(budget.take() for _ in range(1000)) == 20
    now += 0.5
    assert sum(budget.take() for _ in range(100)) == 5


@pytest.mark.parametrize(("address", "networks", "allowed"), [
    ("192.168.1.7", [], True),
    ("192.168.1.7", ["192.168.1.0/24"], True),
    ("192.168.2.7", ["192.168.1.0/24"], False),
    ("::ffff:192.168.1.7", ["192.168.1.0/24"], True),  # an IPv4 client on a v6 socket
    ("fd00::5", ["192.168.1.0/24", "fd00::/8"], True),
    ("fe80::1%eth0", ["fe80::/10"], True),
    ("not an address", ["0.0.0.0/0"], False),
])
def test_allowed_networks(address: str, networks: list[str], allowed: bool) -> None:
    assert allowed_address(address, networks) is allowed


def test_clients_are_capped_under_the_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def limit(soft: int) -> None:
        monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, 1 << 20))

    limit(1024)
    assert client_cap(listeners=1, inverters=1) == proxy.Limits.clients
    limit(200)  # 64 for the bridge, 2 inverters, 16 waiting to be accepted per proxy
    assert client_cap(listeners=2, inverters=2) == (200 - 64 - 2 - 2 * 16) // 2 == 51
    limit(50)
    assert client_cap(listeners=1, inverters=1) == 1
