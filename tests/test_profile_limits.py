"""profile() at extreme sizes and its promise to leave the model untouched."""

from __future__ import annotations

import subprocess
import sys

import torch

import mobilenets
from mobilenets import create_model


def test_summary_at_3000_px_peaks_under_1_gb():
    code = (
        "import resource, subprocess, sys;"
        "r = subprocess.run([sys.executable, '-m', 'mobilenets', 'summary', 'mobilenet_v2',"
        " '--resolution', '3000', '--json'], capture_output=True);"
        "assert r.returncode == 0, r.stderr;"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_kib = int(out.stdout.strip())
    assert peak_kib < 1024 * 1024, f"{peak_kib / 1024:.0f} MiB"


def test_profile_leaves_the_models_weights_device_and_mode_unchanged():
    model = create_model("mobilenet_v2", 0.35, 64, num_classes=5)
    model.train()
    model.blocks[0].eval()  # a mixed train/eval state must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    rep = mobilenets.profile(model, resolution=96)
    assert rep.macs > 0 and rep.params == sum(p.numel() for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(t.device.type == "cpu" for t in after.values())
