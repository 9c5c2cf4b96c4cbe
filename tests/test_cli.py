"""The command line, offline: listings and decoding (no inverter needed)."""

from __future__ import annotations

import pytest

from sermatec_bridge import cli
from sermatec_bridge.protocol.frame import checksum


def test_list_shows_how_to_send_the_register_query(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--pcu", "609"]) == cli.Exit.OK
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("0xbb"))
    assert "get --el bb --registers ADDR[,ADDR...] --risk-inverter-lockup" in line


@pytest.mark.parametrize("reported", [991, 998])
def test_versions_991_and_998_read_as_601(reported: int,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--pcu", str(reported)]) == cli.Exit.OK
    out = capsys.readouterr().out
    assert f"PCU version {reported} (tables of PCU 500)" in out
    assert "0xbb" not in out  # the register commands come with PCU 603


def test_decode_applies_the_tables_of_the_effective_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    body = bytes.fromhex("fe5514649d002e") + bytes(46)  # 0x9d, working parameters 2
    hex_frame = (body + bytes([checksum(body), 0xAE])).hex()
    assert cli.main(["decode", "--json", "--pcu", "991", hex_frame]) == cli.Exit.OK
    out = capsys.readouterr().out
    assert '"pcu_version": 601' in out
    assert '"bypass"' in out and "generator_rated_power" not in out  # PCU 500, not 603
