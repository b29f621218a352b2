import os

import pytest
import torch

# Two pytest-xdist workers share two cores: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the whole module (tiny models: no faster with more, and immune
    to a busy CPU); a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained MobileNetV1 saved as a checkpoint and exported to ONNX, plus one image:
    (model, checkpoint folder, .onnx path, image path)."""
    import numpy as np
    from PIL import Image
    from support import NAMES, PREP

    from mobilenets import create_model, export_onnx, save_checkpoint

    torch.manual_seed(0)
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=3, in_chans=1).eval()
    root = tmp_path_factory.mktemp("tiny")
    ckpt = save_checkpoint(root / "ckpt", model, NAMES, preprocess=PREP)
    onnx_path = root / "m.onnx"
    export_onnx(model, onnx_path, class_names=NAMES, preprocess=PREP)
    img = root / "x.png"
    Image.fromarray(np.arange(40 * 40, dtype=np.uint8).reshape(40, 40)).save(img)
    return model, ckpt, onnx_path, img
