"""bench/throughput.py's pure parts: the floor server's answer and the ratio arithmetic."""

from __future__ import annotations

import json
from typing import Any

from bench.tput_report import Ratio, cell, median, ratio_table
from bench.trivial_server import BODY, app


async def test_trivial_server_reads_the_whole_body_then_answers_fixed_json() -> None:
    incoming = [
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/v1/chat/completions"}, receive, send)

    assert incoming == []
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(BODY)).encode()
    assert json.loads(sent[1]["body"])["object"] == "chat.completion"


def test_ratio_pairs_numbers_of_one_repetition_and_judges_the_median() -> None:
    at_least = Ratio("rate", "exact_rate", "trivial_rate", 0.40, True)
    at_most = Ratio("p50", "exact_p50", "trivial_p50", 3.0, False)
    samples = [
        {"exact_rate": 400.0, "trivial_rate": 1000.0, "exact_p50": 2.0, "trivial_p50": 0.5},
        {"exact_rate": 300.0, "trivial_rate": 1000.0, "exact_p50": 1.0, "trivial_p50": 0.5},
        {"exact_rate": 500.0, "trivial_rate": 1000.0, "exact_p50": 3.0, "trivial_p50": 0.5},
    ]

    rates = [at_least.of(s) for s in samples]
    latencies = [at_most.of(s) for s in samples]

    assert rates == [0.4, 0.3, 0.5]
    assert median(rates) == 0.4
    assert at_least.verdict(median(rates)) == "met"
    assert median(latencies) == 4.0
    assert at_most.verdict(median(latencies)) == "**NOT met**"


def test_missing_sides_give_no_ratio_and_no_row() -> None:
    ratio = Ratio("redisvl", "first_rate", "redisvl_rate")
    samples = [{"first_rate": 100.0}]

    assert ratio.of(samples[0]) != ratio.of(samples[0])  # NaN
    assert ratio.verdict(float("nan")) == "-"
    assert ratio_table([ratio], samples).rows == []


def test_cell_shows_median_and_spread_in_each_unit() -> None:
    samples = [{"x_p50": 1.234, "x_rate": 1200.0}, {"x_p50": 2.0, "x_rate": 900.0}]

    assert cell(samples, "x_p50") == "1.62 (1.23–2.00)"
    assert cell(samples, "x_rate") == "1,050 (900–1,200)"
    assert cell(samples, "missing_p50") == "-"


def test_the_comparison_sentinels_ratios_sit_beside_the_default_sentinels() -> None:
    rate = Ratio("rate", "exact_rate", "trivial_rate", 0.40, True)
    floor_only = Ratio("in-process", "inproc_rate", "trivial_rate")
    samples = [
        {"exact_rate": 500.0, "alt_exact_rate": 300.0, "trivial_rate": 1000.0, "inproc_rate": 1.0},
        {"exact_rate": 450.0, "alt_exact_rate": 360.0, "trivial_rate": 1000.0, "inproc_rate": 1.0},
    ]

    assert [rate.of(s, "alt_") for s in samples] == [0.3, 0.36]
    assert floor_only.of(samples[0], "alt_") != floor_only.of(samples[0], "alt_")  # NaN
    table = ratio_table([rate, floor_only], samples, workers=1, other=2)
    assert "1 worker" in table.headers[3]
    assert "2 workers" in table.headers[6]
    assert table.rows[0][3:] == [
        "0.50, 0.45",
        "**0.47**",
        "met",
        "0.30, 0.36",
        "0.33 (**NOT met**)",
    ]
    assert table.rows[1][6:] == ["-", "-"]
