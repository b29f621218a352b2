"""The command line: summary/compare output, and one-line errors with the right exit codes."""

import json

import pytest
from support import run_module as cli


def test_summary_json_has_report_keys():
    r = cli("summary", "mobilenet_v1", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("params", "macs", "layers", "largest_tensor_elems", "peak_activation_elems"):
        assert key in d
    assert d["macs"] == 568_740_352 and d["peak_activation_elems"] == 1_204_224


def test_summary_table_and_options():
    r = cli(
        "summary",
        "mobilenet_v2",
        "--width",
        "0.5",
        "--resolution",
        "28",
        "--small-input",
        "--in-chans",
        "1",
        "--num-classes",
        "10",
        "--activation",
        "relu",
    )
    assert r.returncode == 0, r.stderr
    assert "blocks.16.project.conv" in r.stdout and "pointwise" in r.stdout
    assert "mobilenet_v2 at 28x28x1" in r.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["summary", "mobilenet_v9"], "unknown model"),
        (["summary", "mobilenet_v1", "--width", "0"], "--width"),
        (["summary", "mobilenet_v1", "--width", "-0.5"], "--width"),
        (["summary", "mobilenet_v1", "--resolution", "31"], "resolution"),
        (["summary", "mobilenet_v1", "--resolution", "15", "--small-input"], "resolution"),
        (["summary", "mobilenet_v1", "--resolution", "1.5"], "--resolution"),
        (["summary", "mobilenet_v1", "--in-chans", "0"], "--in-chans"),
        (["summary", "resnet50", "--width", "0.5"], "--width"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, needle):
    r = cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_compare_json_prints_ours_beside_published():
    r = cli("compare", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    names = [row["model"] for row in d["baselines"]]
    assert names == [
        "mobilenet_v1",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
        "resnet50",
        "vgg16",
    ]
    # V3: ours within 2% of the paper's Table 3 MAdds and params (its rounding: 219 vs 216.6 M)
    for r in d["mobilenet_v3"]:
        if "paper_macs_m" in r:
            assert abs(r["macs"] / 1e6 / r["paper_macs_m"] - 1) < 0.02
            assert abs(r["params"] / 1e6 / r["paper_params_m"] - 1) < 0.025
    for row in d["baselines"]:
        assert abs(row["weights_mb_fp32"] - row["params"] * 4 / 1e6) < 1e-9
        assert row["published"]["source"]
    assert len(d["mobilenet_v1_grid"]) == 16 and len(d["mobilenet_v2_grid"]) == 22
    # TF-slim prints V2 MACs truncated to millions: ours must truncate to the same figure.
    assert all(int(r["macs"] / 1e6) == r["slim_macs_m"] for r in d["mobilenet_v2_grid"])
    v1 = {(r["width"], r["resolution"]): r for r in d["mobilenet_v1_grid"]}
    assert all(
        abs(r["macs"] / 1e6 - r["paper_macs_m"]) <= 1 for r in v1.values() if "paper_macs_m" in r
    )
