"""The benchmarks keep running: each one's ``--quick`` smoke run, then the report built from them.

These check that every benchmark starts its servers, measures, checks what it received and
writes well-formed results, and that ``bench.report`` turns them into a page with plots. They
assert nothing about speed: figures come from ``python -m bench`` on demand, never from tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


def check_result(doc: dict[str, Any], name: str) -> None:
    assert doc["benchmark"] == name
    assert doc["description"].strip()
    assert doc["command"].startswith(f"python -m bench.bench_{name}")
    assert "--output" not in doc["command"]  # no local path in what gets published
    assert doc["machine"]["cores"] >= 1
    assert doc["tables"], "no tables"
    for table in doc["tables"]:
        assert table["rows"], table["title"]
        for row in table["rows"]:
            assert row["samples"], (table["title"], row["case"])
            assert row["min"] <= row["median"] <= row["max"]
        if table["baseline"] is not None:
            base = [row for row in table["rows"] if row["case"] == table["baseline"]]
            assert base, f"{table['title']}: baseline {table['baseline']} not measured"
            # A ratio to a zero median is undefined (a quick run can measure 0 extra bytes).
            assert all(
                row["ratio"] == pytest.approx(1.0) if row["median"] else row["ratio"] is None
                for row in base
            ), [(row["median"], row["ratio"]) for row in base]
    for target in doc["targets"]:
        assert set(target) == {"name", "target", "value", "met"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_quick_run_writes_well_formed_results(name: str, results: Path) -> None:
    output = results / f"{name}.json"
    command = [sys.executable, "-m", f"bench.bench_{name}", "--quick", "--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    check_result(json.loads(output.read_text()), name)


@pytest.mark.timeout(120)
def test_report_renders_every_result_with_its_plot(results: Path, tmp_path: Path) -> None:
    found = sorted(p.stem for p in results.glob("*.json"))
    if found != sorted(BENCHMARKS):
        pytest.skip(f"needs every quick run above; have {found}")
    docs = tmp_path / "docs" / "benchmarks.md"
    command = [sys.executable, "-m", "bench.report", "--results", str(results), "--docs", str(docs)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=100)
    page = docs.read_text()
    for name in BENCHMARKS:
        doc = json.loads((results / f"{name}.json").read_text())
        assert f"## {doc['title']}" in page
        assert f"![{doc['title']}](img/bench/{name}.png)" in page
        png = docs.parent / "img" / "bench" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for table in doc["tables"]:
            assert f"{table['title']}:" in page
    assert "## Machine" in page
    assert str(ROOT) not in page
