"""The op registry refactor (issue 16) keeps the ``.tflite`` bytes written for today's models:
V1 and V2, symmetric and SAME padding, fp32 and int8, hashed before the refactor.

The int8 bytes depend on PyTorch's float arithmetic (BN folding, calibration): the hashes were
recorded with torch 2.14.1 on x86-64 CPU, and the test skips elsewhere."""

from __future__ import annotations

import hashlib
import platform

import pytest
import torch

from mobilenets import create_model
from mobilenets.fold import fold_bn
from mobilenets.micro.lower import lower
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.tflite import tflite_bytes
from mobilenets.testing import randomize_bn

TORCH = "2.14.1"
BEFORE = {
    "mobilenet_v1-symmetric-fp32": "207643da89699fbf6fc2469339dbf8a1ac6dad14d02dbe7157d418a1913cf91b",
    "mobilenet_v1-symmetric-int8": "f52d6e454eaa5cde583419b6f8c7b19781ddf67c95a97d7490f27bafd04858fc",
    "mobilenet_v1-same-fp32": "9c4bbd74af139c131ce320678486f56541a2275decc8ae5b5bb0499e50de7d36",
    "mobilenet_v1-same-int8": "d0eaa017385a90fa5042fc51713d7cc09cc4e368e79c38fbd2cf2c4256967da1",
    "mobilenet_v2-symmetric-fp32": "80fcd0fad2285ec188cad609dcc6660f94f6161af038396222613613795208f5",
    "mobilenet_v2-symmetric-int8": "07dfc95ee8feb47a074953c041a68d67a53ab93eddb11d5995736e05fac44dad",
    "mobilenet_v2-same-fp32": "e48069d9c679b837b3e2b54fb84e7487f11718658d4b5ee3fcf08b7e217b477f",
    "mobilenet_v2-same-int8": "0668df5712b24405843ab8ccc4e8f30fe34acbfb6ed7f02befd3d58134a9b868",
}


@pytest.mark.skipif(
    not torch.__version__.startswith(TORCH) or platform.machine() != "x86_64",
    reason=f"hashes recorded with torch {TORCH} on x86-64",
)
@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_written_bytes_are_unchanged(arch, padding):
    torch.manual_seed(0)
    alpha = 0.25 if arch == "mobilenet_v1" else 0.35
    model = create_model(arch, alpha, 32, num_classes=10, padding=padding)
    model = randomize_bn(model, linear_std=0.1)
    calib = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    graphs = {"fp32": lower(fold_bn(model.eval())).graph, "int8": quantize_int8(model, calib)}
    for kind, graph in graphs.items():
        digest = hashlib.sha256(tflite_bytes(graph)).hexdigest()
        assert digest == BEFORE[f"{arch}-{padding}-{kind}"], f"{arch} {padding} {kind}"
