"""What makes a compile report trustworthy: sample counts and 95% intervals on accuracy, an
accuracy axis that does not zoom, per-class accuracy and confusion, the previous version, the
package and the devices' own figures."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
from test_report import _PNG, cells, sample

from compiler.compile.report_render import format_table, write_html
from compiler.compile.report_stats import accuracy_floor, overlap, wilson

# 360 held-out images, 36 per class (illustrative counts): int8 reads two 3s as 8s
CONFUSION_FP32 = [[36 if i == j else 0 for j in range(10)] for i in range(10)]
CONFUSION_INT8 = [row[:] for row in CONFUSION_FP32]
CONFUSION_INT8[3][3], CONFUSION_INT8[3][8] = 34, 2


def trusted(**changes: Any) -> dict[str, Any]:
    report = sample(**changes)
    stages = report["stages"]
    stages["fp32"] |= {"accuracy": 350 / 360, "samples": 360, "confusion": CONFUSION_FP32}
    stages["fp32"]["per_class_accuracy"] = {str(i): 1.0 for i in range(10)}
    stages["int8"] |= {"accuracy": 348 / 360, "samples": 360, "confusion": CONFUSION_INT8}
    stages["int8"]["per_class_accuracy"] = {str(i): 1.0 for i in range(10)} | {"3": 0.94444}
    report["labels"] = [f"digit{i}" for i in range(10)]
    report["layers"][0]["module"] = "Conv2d"
    return report


def test_wilson_interval_known_values() -> None:
    low, high = wilson(0.5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson(1.0, 360)  # a perfect score still has an interval below it
    assert high == 1.0 and 0.98 < low < 0.995
    assert wilson(0.0, 20)[0] == 0.0
    assert wilson(0.9, 0) == (0.0, 1.0)


def test_two_images_on_360_are_within_the_noise() -> None:
    fp32, int8 = wilson(350 / 360, 360), wilson(348 / 360, 360)
    assert overlap(fp32, int8)
    assert not overlap(wilson(0.99, 2000), wilson(0.90, 2000))


@pytest.mark.parametrize(
    ("lows", "floor"),
    [
        ([94.6, 95.0], 90.0),  # 92.6 rounded down to 5; the axis spans 10 points or more
        ([99.2], 90.0),  # never above 90: a near-perfect model is not zoomed in on either
        ([61.3, 40.2], 35.0),
        ([1.0], 0.0),
        ([], 0.0),
    ],
)
def test_accuracy_axis_floor(lows: list[float], floor: float) -> None:
    assert accuracy_floor(lows) == floor


def test_table_shows_interval_and_sample_count() -> None:
    table = format_table(trusted())
    fp32 = cells(table, "fp32")
    assert fp32[5:8] == ["97.22%", "95.0–98.5%", "360"]
    assert cells(table, "pruned")[6:8] == ["-", "-"]  # no count recorded: no interval shown
    assert cells(table, "fp32", 1) == [
        "fp32",
        "0.284 ms",
        "0.458 ms",
        "0.135 ms",
        "0.200 ms",
        "1.00×",
    ]
    assert "95% CI: Wilson, over the n held-out samples" in table


def test_per_class_accuracy_and_confusion() -> None:
    table = format_table(trusted())
    assert cells(table, "3 digit3") == ["3 digit3", "36", "100.00%", "94.44%", "-5.56 pt"]
    assert "confusion matrix, int8 (rows: true class):" in table
    rows = [line.split() for line in table.splitlines() if line.strip().startswith("3 digit3")]
    assert ["3", "digit3", "0", "0", "0", "34", "0", "0", "0", "0", "2", "0"] in rows


def test_layers_are_named_by_module_path_and_class() -> None:
    table = format_table(trusted())
    assert cells(table, "0 (Conv2d)")[1] == "Conv"
    assert cells(table, "2")[1] == "Conv"  # no class recorded: the path alone


def test_previous_version_comparison_says_whether_it_is_noise() -> None:
    previous = {
        "name": "digits-cnn",
        "version": "0.9.0",
        "created_at": "2026-11-30T10:00:00+00:00",
        "stages": {
            "int8": {
                "accuracy": 350 / 360,
                "samples": 360,
                "file_bytes": 637800,
                "ort_p50_ms_1t": 0.142,
                "ort_p99_ms_1t": 0.2,
                "ort_p50_ms_all": 0.1,
            }
        },
    }
    table = format_table(trusted(previous=previous))
    assert "compared with the previous version, against digits-cnn 0.9.0" in table
    accuracy = cells(table, "accuracy")
    assert accuracy[1:3] == ["97.22% (n=360)", "96.67% (n=360)"]
    assert accuracy[3] == "-0.56 pt (within the 95% intervals)"
    assert cells(table, "size")[1:] == ["637.80 kB", "318.90 kB", "-50.0%"]
    assert cells(table, "p50 1 thread")[3] == "-50.0%"


def test_package_and_devices_sections(tmp_path: Path) -> None:
    report = trusted(
        package={
            "name": "digits-cnn",
            "version": "1.0.0",
            "created_at": "2026-12-01T05:00:00+00:00",
            "sha256": "ab" * 32,
            "model_bytes": 318900,
            "key_ids": ["0123456789abcdef"],
            "preprocess": {"kind": "image", "size": [28, 28]},
        },
        devices={
            "cam-7": {
                "backend": "openvino",
                "p50_ms": 0.61,
                "p99_ms": 0.93,
                "at": "2026-12-01T05:10:00Z",
            },
            "cam-2": {"backend": "onnxruntime", "p50_ms": None},
        },
    )
    table = format_table(report)
    assert cells(table, "model sha256")[1] == "ab" * 32
    assert cells(table, "signed by key")[1] == "0123456789abcdef"
    assert '"size": [28, 28]' in cells(table, "preprocessing")[1]
    assert cells(table, "cam-7") == [
        "cam-7",
        "openvino",
        "0.610 ms",
        "0.930 ms",
        "2026-12-01T05:10:00Z",
    ]
    assert cells(table, "cam-2")[2:] == ["-", "-", "-"]
    text = write_html(report, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<h2>On devices</h2>" in text
    assert "<td>cam-7</td><td>openvino</td>" in text
    assert '<td class="num off">2</td>' in text  # the confusion matrix marks misses
    assert "<h2>Per-class accuracy</h2>" in text


def test_accuracy_chart_starts_at_the_floor_with_error_bars() -> None:
    from compiler.compile import report_charts

    report = trusted()
    fig = report_charts._size_accuracy_chart(report)
    assert fig is not None
    axes = fig.get_axes()[1]
    low, high = axes.get_ylim()
    # lowest lower bound: pruned has no count, so int8's 94.4%; less 2 → 92.4 → 90
    assert (low, high) == (90.0, 100.5)
    assert "n = 360" in axes.get_title()
    assert axes.containers  # the error bars
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_html_still_has_its_four_charts(tmp_path: Path) -> None:
    text = write_html(trusted(), tmp_path / "r.html").read_text(encoding="utf-8")
    images = _PNG.findall(text)
    assert len(images) == 4
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert re.search(r"95% CI</th>", text)


def test_layer_speed_rows_carry_the_module_class_too() -> None:
    report = trusted(layer_speed=[{"name": "0", "op": "Conv", "macs": 97344, "int8_us": 26.9}])
    table = format_table(report)
    assert cells(table, "0 (Conv2d)", 1)[1:4] == ["Conv", "-", "97.34 k"]
