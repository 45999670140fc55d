"""The compile report as a terminal table and as a self-contained HTML page."""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from compiler.compile.report_render import format_table, write_html

_PNG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _stage(**overrides: Any) -> dict[str, Any]:
    stage = {
        "params": 1199882,
        "macs": 11977856,
        "file_bytes": 4810559,
        "accuracy": 0.9722,
        "top1_agreement": 1.0,
        "ort_p50_ms_1t": 0.284,
        "ort_p99_ms_1t": 0.458,
        "ort_p50_ms_all": 0.135,
        "ort_p99_ms_all": 0.2,
    }
    return stage | overrides


def _layer(
    name: str,
    op: str,
    before: int | None,
    after: int | None,
    ratio: float | None,
    quantized: bool,
    sensitivity: float | None,
) -> dict[str, Any]:
    return {
        "name": name,
        "op": op,
        "channels_before": before,
        "channels_after": after,
        "pruning_ratio": ratio,
        "quantized": quantized,
        "sensitivity": sensitivity,
    }


SAMPLE: dict[str, Any] = {
    "model": {"name": "digits-cnn", "version": "1.0.0"},
    "environment": {
        "torch_version": "2.13.0+cpu",
        "onnxruntime_version": "1.32.0",
        "onnx_version": "1.23.2",
        "opset": 18,
        "target": "x86-vnni",
        "calibration": "minmax",
        "compiler_version": "0.1.0",
        "machine": "x86_64, 2 cores",
    },
    "stages": {
        "fp32": _stage(),
        "pruned": _stage(params=301234, macs=3012345, file_bytes=1210000, accuracy=0.9694),
        "int8": _stage(
            params=None, macs=None, file_bytes=318900, accuracy=0.9694, ort_p50_ms_1t=0.071
        ),
    },
    "torch_eager": {"p50_ms_1t": 0.591, "p99_ms_1t": 0.772},
    "export": {"max_abs_diff": 4.7e-06, "top1_agreement": 1.0},
    "budget": {"max_accuracy_drop": 1.0, "accuracy_drop": 0.28, "met": True},
    "layers": [
        _layer("0", "Conv", 32, 16, 0.5, True, 0.0012),
        _layer("2", "Conv", 64, 32, 0.5, False, 0.0381),
        _layer("7", "Gemm", None, None, None, True, None),
    ],
    "float_layers": ["2"],
}


def sample(**changes: Any) -> dict[str, Any]:
    report = copy.deepcopy(SAMPLE)
    report.update(changes)
    return report


def cells(table: str, first: str, nth: int = 0) -> list[str]:
    """The cells of the ``nth`` row whose first cell is ``first`` (columns are 2+ spaces apart):
    a stage's row in the size and accuracy table (0), then in the latency table (1)."""
    found = [
        row for line in table.splitlines() if (row := re.split(r"\s{2,}", line.strip()))[0] == first
    ]
    if len(found) <= nth:
        raise AssertionError(f"no row {first!r} in:\n{table}")
    return found[nth]


def test_table_has_every_stage_with_human_units() -> None:
    table = format_table(sample())
    assert table.startswith("Edgewise compile report: digits-cnn 1.0.0")
    fp32 = cells(table, "fp32")
    assert fp32 == [
        "fp32",
        "1.20 M",
        "11.98 M",
        "4.81 MB",
        "1.00×",
        "97.22%",
        "-",
        "-",
        "100.00%",
    ]  # fmt: skip  (no sample count in this report: no interval)
    latency = cells(table, "fp32", 1)
    assert latency == ["fp32", "0.284 ms", "0.458 ms", "0.135 ms", "0.200 ms", "1.00×"]
    pruned = cells(table, "pruned")
    assert pruned[1:6] == ["301.23 k", "3.01 M", "1.21 MB", "0.25×", "96.94%"]
    int8 = cells(table, "int8")
    assert int8[3] == "318.90 kB"
    assert table.index("fp32") < table.index("pruned") < table.index("int8")


def test_speed_up_and_size_ratio_are_relative_to_fp32() -> None:
    report = sample()
    report["stages"]["fp32"] |= {"ort_p50_ms_1t": 0.3, "file_bytes": 4_000_000}
    report["stages"]["int8"] |= {"ort_p50_ms_1t": 0.1, "file_bytes": 1_000_000}
    int8 = cells(format_table(report), "int8")
    assert int8[4] == "0.25×"  # size ratio
    assert cells(format_table(report), "int8", 1)[-1] == "3.00×"  # speed-up, p50 at one thread
    # torch eager 0.591 ms vs int8 0.1 ms
    assert "int8 5.91×" in format_table(report)


def test_missing_values_print_as_dash() -> None:
    report = sample()
    del report["torch_eager"]
    report["stages"]["pruned"] |= {"accuracy": float("nan"), "ort_p99_ms_1t": None}
    del report["stages"]["pruned"]["top1_agreement"]
    report["stages"]["fp32"]["ort_p50_ms_1t"] = None  # no baseline: no speed-up anywhere
    table = format_table(report)
    int8 = cells(table, "int8")
    assert int8[1:3] == ["-", "-"]  # params, MACs of an ONNX-quantized graph
    assert cells(table, "int8", 1)[-1] == "-"
    pruned = cells(table, "pruned")
    assert pruned[5:9] == ["-", "-", "-", "-"]  # accuracy, interval, n, agreement
    assert cells(table, "pruned", 1)[2] == "-"  # p99, one thread
    assert "torch eager (1 thread): p50 -, p99 -" in table
    assert "speed-up vs torch eager" not in table


def test_layer_table_budget_and_environment() -> None:
    table = format_table(sample())
    assert cells(table, "0") == ["0", "Conv", "32 → 16", "50.0%", "int8", "0.0012"]
    assert cells(table, "2")[4] == "float"  # in float_layers
    assert cells(table, "7")[2:] == ["-", "-", "int8", "-"]
    assert "budget: met (fp32 → int8 accuracy drop 0.28 pp, allowed 1.00 pp)" in table
    assert "onnxruntime 1.32.0" in table
    assert "machine x86_64, 2 cores" in table
    assert all(len(line) <= 110 for line in table.splitlines())
    budget = {"max_accuracy_drop": 0.1, "accuracy_drop": 2.5, "met": False}
    missed = format_table(sample(budget=budget))
    assert "budget: NOT met (fp32 → int8 accuracy drop 2.50 pp, allowed 0.10 pp)" in missed


def test_html_is_self_contained_with_charts(tmp_path: Path) -> None:
    report = sample(model={"name": "<b>cnn</b> & co", "version": "2.0"})
    report["layers"][2]["name"] = "fc<1>"
    path = write_html(report, tmp_path / "out" / "report.html")
    assert path == tmp_path / "out" / "report.html"
    text = path.read_text(encoding="utf-8")
    images = _PNG.findall(text)
    assert len(images) == 4  # latency, size/accuracy, channels, sensitivity
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in images)
    assert "&lt;b&gt;cnn&lt;/b&gt; &amp; co 2.0" in text
    assert "<b>cnn" not in text
    assert "<td>fc&lt;1&gt;</td>" in text
    assert "fc<1>" not in text
    assert "<script" not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "32 → 16" in text
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_minimal_report_without_pruning_or_layers(tmp_path: Path) -> None:
    report = {
        "model": {"name": "onnx-model"},
        "stages": {
            "fp32": _stage(macs=None),
            "int8": _stage(params=None, macs=None, file_bytes=1_300_000, ort_p50_ms_1t=0.142),
        },
        "layers": [],
        "float_layers": [],
    }
    table = format_table(report)
    assert "pruned" not in table
    assert cells(table, "int8", 1)[-1] == "2.00×"
    assert "layers: -" in table
    assert "budget: no accuracy budget recorded" in table
    assert "environment: -" in table
    path = tmp_path / "report.html"
    path.write_text("stale")
    write_html(report, path)
    text = path.read_text(encoding="utf-8")
    assert len(_PNG.findall(text)) == 2  # no layer charts without layer data
    assert "No per-layer data." in text
    assert "<h1>onnx-model</h1>" in text
    assert list(tmp_path.iterdir()) == [path]


def test_empty_report_still_renders(tmp_path: Path) -> None:
    table = format_table({})
    assert "stages: -" in table
    assert "layers: -" in table
    text = write_html({}, tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "No stages recorded." in text
    assert "data:image/png" not in text


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, compiler.compile.report_render; assert 'matplotlib' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
