"""The options of ``benchmarks/request_response.py`` (its runs are BENCHMARKS.md's)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.append(str(BENCHMARKS))  # the scripts import each other by module name

import request_response  # noqa: E402


def test_a_body_over_the_message_limit_is_refused_up_front(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # tester47 F4: --body-size 4000000 crashed the baseline server (websockets' 1 MiB
    # max_size) with two tracebacks.
    with pytest.raises(SystemExit) as exc_info:
        request_response.parse_args(["--body-size", "4000000"])
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "error: --body-size must be 12 to 1,000,000: a request over the 1 MiB message"
        " limit of each side would be refused\n"
    )


def test_help_states_the_body_size_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        request_response.parse_args(["--help"])
    assert "12 to 1,000,000" in " ".join(capsys.readouterr().out.split())
