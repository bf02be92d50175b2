"""The benchmark's parts: each one a script with a visible ``--help``, a harness that measures a step in a child, and a driver that gathers them."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import run as bench_run  # noqa: E402

PART_SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.stem != "harness")


def test_every_part_named_by_the_driver_is_a_script_and_every_script_is_a_part():
    assert {f"{name}.py" for name in bench_run.PARTS} | {"run.py"} == {p.name for p in PART_SCRIPTS}


@pytest.mark.parametrize("script", PART_SCRIPTS, ids=lambda p: p.stem)
def test_each_part_has_a_visible_help_with_out_and_quick_and_no_hidden_flag(script, capsys, monkeypatch):
    assert "SUPPRESS" not in script.read_text(), f"{script.name} has a hidden option"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "--out" in shown and "--quick" in shown, shown
    assert f"python bench/{script.name}" in shown, "its docstring (how to run it) is the help"


def _peak_of_a_big_array(megabytes: int) -> dict:
    import numpy as np

    block = np.ones(megabytes * 1024 * 1024, np.uint8)
    return {"sum": int(block.sum())}


def _fails() -> dict:
    raise ValueError("no such model")


def test_a_step_in_a_child_reports_its_result_and_its_own_peak_memory():
    small = harness.in_child(_peak_of_a_big_array, 1)
    big = harness.in_child(_peak_of_a_big_array, 300)
    assert small["sum"] == 1024 * 1024 and big["sum"] == 300 * 1024 * 1024
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 250  # each child's own peak, not the parent's nor the last one's


def test_a_failing_step_stops_its_part_with_the_reason():
    with pytest.raises(SystemExit, match="_fails failed: ValueError: no such model"):
        harness.in_child(_fails)


def test_the_result_is_written_whole_with_the_machine(tmp_path, capsys):
    out = tmp_path / "results" / "part.json"
    harness.write({"figure": 1.5, "table": "| a | b |"}, out)
    written = json.loads(out.read_text())
    assert written["figure"] == 1.5 and written["machine"]["cpu_count"] >= 1
    assert [p.name for p in out.parent.iterdir()] == ["part.json"]  # no staging file left
    assert "| a | b |" in capsys.readouterr().out


def test_the_driver_records_done_skipped_and_failed_parts_and_fails_when_one_failed(tmp_path, monkeypatch):
    parts = {
        "good": 'import json, sys; json.dump({"figure": 2, "quick": "--quick" in sys.argv}, open(sys.argv[sys.argv.index("--out") + 1], "w"))',
        "absent": f'import sys; print("skipped: no champion here", file=sys.stderr); sys.exit({harness.SKIPPED})',
        "broken": 'raise RuntimeError("out of memory")',
    }
    for name, code in parts.items():
        (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.setattr(bench_run, "BENCH", tmp_path)
    monkeypatch.setattr(bench_run, "PARTS", tuple(parts))
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["run.py", "--quick", "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        bench_run.main()
    assert exited.value.code == 1
    gathered = json.loads(out.read_text())["parts"]
    assert gathered["good"]["figure"] == 2 and gathered["good"]["quick"] is True
    assert gathered["absent"]["skipped"] == "no champion here"
    assert "RuntimeError: out of memory" in gathered["broken"]["failed"]


def test_no_module_of_the_package_or_the_bench_is_over_500_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in [*(REPO_ROOT / "src").rglob("*.py"), *BENCH.glob("*.py")]
            if (n := len(p.read_text().splitlines())) > 500}  # fmt: skip
    assert not long, long

