"""
The issue 11 benchmarks of framework cost (``benchmarks/framework_cost.py``) and latency
under load (``benchmarks/latency_load.py``): their arithmetic on made-up rounds, and
(slow: each starts a dozen processes) a ``--quick`` run of each. Also a short run of
``benchmarks/aead_cold.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .processes import SRC

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.append(str(BENCHMARKS))  # the scripts import each other by module name

import aead_cold  # noqa: E402
import fast_path  # noqa: E402
import framework_cost  # noqa: E402
import latency_load  # noqa: E402


def _figures(rate: float, server: float, client: float) -> dict[str, float]:
    return {
        "rate": rate,
        "server_cpu_us": server,
        "client_cpu_us": client,
        "other_cpus": 0.1,
        "steal": 0.0,
    }


def test_framework_cost_is_ours_minus_raw_per_round() -> None:
    raw = [_figures(100_000, 9.0, 9.0), _figures(90_000, 10.0, 11.0), _figures(95_000, 9.5, 9)]
    ours = [_figures(30_000, 11.0, 12.0), _figures(25_000, 13.0, 15.0), _figures(28_000, 30, 9)]
    run = {"rounds": {"raw-tcp": {"sequential": raw, "pipelined": raw}}}
    run["rounds"]["tcp"] = {"sequential": ours, "pipelined": ours}

    cost = framework_cost.cost_figures(run)["pipelined"]

    # Differences per round: server 2, 3, 20.5; client 3, 4, 0.
    assert cost["server"]["cost_us"] == 3.0
    assert (cost["server"]["min_us"], cost["server"]["max_us"]) == (2.0, 20.5)
    assert cost["client"]["cost_us"] == 3.0
    assert not cost["server"]["met"]
    assert cost["client"]["met"]
    assert cost["rate_ratio"] == 28_000 / 95_000
    text = framework_cost.format_cost(framework_cost.cost_figures(run))
    assert "server <= 2.5 us: missed (3.0); client <= 3.5 us: met (3.0)" in text


def _probe(latencies: list[float], load_rate: float | None) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "server_cpus": 0.2,
        "probe_cpus": 0.05,
        "other_cpus": 0.01,
        "steal": 0.0,
        "latencies_us": latencies,
    }
    if load_rate is not None:
        figures["load_cpus"] = 0.1
        figures["load"] = {"sent": 1000, "answered": 1000, "seconds": 1.0, "rate": load_rate}
    return figures


def test_latency_summary_pools_the_rounds_and_compares_p90s() -> None:
    fast, slow = [float(n) for n in range(1, 101)], [float(2 * n) for n in range(1, 101)]
    run = {
        "machine": {"cpu": "test", "python": "3", "websockets": "0"},
        "source": {"commit": "abc", "src_sha256": "def"},
        "settings": {"rounds": 2, "duration": 1.0, "interval": 0.005, "rates": [0, 5000]},
        "rounds": {
            "baseline": {"0": [_probe(fast, None)] * 2, "5000": [_probe(fast, 4990)] * 2},
            "ours": {"0": [_probe(fast, None)] * 2, "5000": [_probe(slow, 5000)] * 2},
        },
    }

    summary = latency_load.summarise(run)

    row = summary["table"]["ours"]["5000"]
    assert row["samples"] == 200
    assert row["p90_us"] == pytest.approx(2 * 90.1)
    assert row["load_rate"] == 5000
    assert summary["p90_ratios"]["5000"]["ours/baseline"]["median"] == pytest.approx(2.0)
    assert summary["p90_ratios"]["5000"]["ours/baseline"]["pooled"] == pytest.approx(2.0)
    assert summary["p90_ratios"]["0"]["ours/baseline"]["median"] == 1.0
    assert "ours/baseline p90 <= 1.5x under load: missed" in latency_load.format_table(run, summary)


def _quick(script: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": SRC}
    command = [sys.executable, str(BENCHMARKS / script), "--quick", "--json", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_framework_cost_quick_run() -> None:
    result = _quick("framework_cost.py")
    assert set(result["cost"]) == {"sequential", "pipelined"}
    assert result["rounds"]["tcp"]["pipelined"][0]["rate"] > 0


@pytest.mark.slow
def test_latency_load_quick_run() -> None:
    result = _quick("latency_load.py", "--impls", "baseline,ours", "--rates", "0,500")
    assert result["table"]["ours"]["500"]["samples"] > 0
    assert result["table"]["ours"]["500"]["load_rate"] > 400
    assert "ours/baseline" in result["p90_ratios"]["500"]


NO_UVLOOP = "the uvloop event loop needs the uvloop package (trustp2p's fast extra): pip install"
NO_PICOWS = "the 'picows' driver needs the picows package (trustp2p's fast extra): pip install"


@pytest.mark.parametrize(
    ("parse_args", "argv", "missing", "says"),
    [
        (fast_path.parse_args, ["--quick"], "uvloop", NO_UVLOOP),
        (framework_cost.parse_args, ["--quick", "--loop", "uvloop"], "uvloop", NO_UVLOOP),
        (fast_path.parse_args, ["--quick"], "picows", NO_PICOWS),
    ],
)
def test_a_missing_extra_is_one_line_and_exit_status_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    parse_args: Any,
    argv: list[str],
    missing: str,
    says: str,
) -> None:
    # tester47 F5: each child printed a traceback, then the parent a third, exit 1.
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "trustp2p.drivers.ws_picows", raising=False)
    with pytest.raises(SystemExit) as exc_info:
        parse_args(argv)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(f"error: {says} {missing}")
    assert "Traceback" not in err


def test_aead_cold_prints_hot_and_cold_per_call(capsys: pytest.CaptureFixture[str]) -> None:
    assert aead_cold.main(["--count", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    calls = [row.split("  ")[0].split(" (")[0] for row in rows]
    assert calls == ["seal", "open", "seal", "open", "copy"]
    for row in rows:
        hot, cold = map(float, row.split()[-2:])
        assert hot > 0 and cold > 0
