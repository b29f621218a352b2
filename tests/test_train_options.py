"""Training options: out-of-range values are one-line usage errors, on the command line and in fit()."""

from __future__ import annotations

import pytest
from support import TINY, one_line, run_cli

from mobilenets import train
from mobilenets.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--label-smoothing", "5"),
        ("--label-smoothing", "1"),
        ("--ema-decay", "-1"),
        ("--weight-decay", "-5"),
        ("--weight-decay", "inf"),
        ("--width", "1e9"),
        ("--width", "inf"),
    ],
)
def test_train_option_ranges_are_one_line_usage_errors(tmp_path, capsys, flag, value):
    rc, _, err = run_cli([*TINY, "--epochs", "1", "--out", tmp_path / "r", flag, value], capsys)
    assert rc == 2 and one_line(err) and flag in err and "must be" in err, err
    assert not (tmp_path / "r").exists()


def test_fit_checks_the_same_ranges(tmp_path):
    with pytest.raises(UsageError, match=r"--label-smoothing must be in \[0, 1\)"):
        train.fit("mobilenet_v1", "fashion-mnist", tmp_path / "r", 1, label_smoothing=5.0)
