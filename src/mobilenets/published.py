"""Published figures that ``compare`` prints beside ours, each with its source.

Copied from the papers and the anchors' own repositories (see the project's
shared/reference/published-numbers.md). MACs are multiply-adds of conv and FC layers.
"""

from __future__ import annotations

SOURCES = {
    "v1_paper": "Howard et al. 2017, MobileNets, arXiv:1704.04861, Tables 6-8",
    "v1_slim": "tensorflow/models research/slim/nets/mobilenet_v1.md (re-trained checkpoints)",
    "v2_paper": "Sandler et al. 2018, MobileNetV2, arXiv:1801.04381 v4, Table 4",
    "v2_slim": "tensorflow/models research/slim/nets/mobilenet/README.md (MACs truncated to M)",
    "v3_paper": "Howard et al. 2019, Searching for MobileNetV3, arXiv:1905.02244 (ICCV 2019), Table 3",
    "v3_slim": "TF-slim/Keras MobileNetV3 checkpoint table (keras/src/applications/mobilenet_v3.py docstring)",
    "torchvision": "torchvision weight cards (ResNet50_Weights.IMAGENET1K_V1, VGG16_Weights.IMAGENET1K_V1, MobileNet_V2_Weights.IMAGENET1K_V1)",
}

# V1 paper, Tables 6 and 7: (alpha, resolution) -> (M MACs, M params, top-1 %).
V1_PAPER = {
    (1.0, 224): (569, 4.2, 70.6),
    (0.75, 224): (325, 2.6, 68.4),
    (0.5, 224): (149, 1.3, 63.7),
    (0.25, 224): (41, 0.5, 50.6),
    (1.0, 192): (418, 4.2, 69.1),
    (1.0, 160): (290, 4.2, 67.2),
    (1.0, 128): (186, 4.2, 64.4),
}
# V1 paper, Table 4: the same network with full 3x3 convolutions ("Conv MobileNet").
V1_PAPER_FULL_CONV = (4866, 29.3, 71.7)

# V1 paper, Table 2: share of MACs / params (conv and FC weights, no BN or biases), in %.
# The paper prints 1.19 for the first conv's MACs; the column only sums to 100 with 1.91.
V1_PAPER_SHARES = {
    "pointwise": (94.86, 74.59),
    "depthwise": (3.06, 1.06),
    "conv": (1.91, 0.02),
    "linear": (0.18, 24.33),
}

# TF-slim V1 checkpoints: alpha -> M params, and (alpha, resolution) -> (M MACs, top-1 float %).
V1_SLIM_PARAMS = {1.0: 4.24, 0.75: 2.59, 0.5: 1.34, 0.25: 0.47}
# fmt: off
V1_SLIM = {
    (1.0, 224): (569, 70.9), (1.0, 192): (418, 70.0), (1.0, 160): (291, 68.0), (1.0, 128): (186, 65.2),
    (0.75, 224): (317, 68.4), (0.75, 192): (233, 67.2), (0.75, 160): (162, 65.3), (0.75, 128): (104, 62.1),
    (0.5, 224): (150, 63.3), (0.5, 192): (110, 61.7), (0.5, 160): (77, 59.1), (0.5, 128): (49, 56.3),
    (0.25, 224): (41, 49.8), (0.25, 192): (34, 47.7), (0.25, 160): (21, 45.5), (0.25, 128): (14, 41.5),
}
# fmt: on

# TF-slim V2 checkpoints: alpha -> M params, and (alpha, resolution) -> (M MACs, top-1 %).
V2_SLIM_PARAMS = {1.4: 6.06, 1.3: 5.34, 1.0: 3.47, 0.75: 2.61, 0.5: 1.95, 0.35: 1.66}
# fmt: off
V2_SLIM = {
    (1.4, 224): (582, 75.0),
    (1.3, 224): (509, 74.4),
    (1.0, 224): (300, 71.8), (1.0, 192): (221, 70.7), (1.0, 160): (154, 68.8), (1.0, 128): (99, 65.3), (1.0, 96): (56, 60.3),
    (0.75, 224): (209, 69.8), (0.75, 192): (153, 68.7), (0.75, 160): (107, 66.4), (0.75, 128): (69, 63.2), (0.75, 96): (39, 58.8),
    (0.5, 224): (97, 65.4), (0.5, 192): (71, 63.9), (0.5, 160): (50, 61.0), (0.5, 128): (32, 57.7), (0.5, 96): (18, 51.2),
    (0.35, 224): (59, 60.3), (0.35, 192): (43, 58.2), (0.35, 160): (30, 55.7), (0.35, 128): (20, 50.8), (0.35, 96): (11, 45.5),
}
# fmt: on

# V3 paper, Table 3 (ImageNet, 224 px; Pixel-1 latency not copied): (model, alpha) ->
# (M MAdds, M params, top-1 %). The paper counts multiply-adds of convs and FC layers; whether
# its squeeze-excite rows count the broadcast multiply is not stated (it is 0.4 M MACs at most).
V3_PAPER = {
    ("mobilenet_v3_large", 1.0): (219, 5.4, 75.2),
    ("mobilenet_v3_large", 0.75): (155, 4.0, 73.3),
    ("mobilenet_v3_small", 1.0): (56, 2.5, 67.4),
    ("mobilenet_v3_small", 0.75): (44, 2.0, 65.4),
}
# TF-slim / Keras checkpoint table: (model, alpha, minimalistic) -> (M MACs, M params, top-1 %).
# Its Small rows (66 M MACs, 2.9 M params at alpha 1) disagree with the paper's Table 3 (56 M,
# 2.5 M) and with the network Keras itself builds (2.54 M params): printed as published.
V3_SLIM = {
    ("mobilenet_v3_large", 1.0, False): (217, 5.4, 75.6),
    ("mobilenet_v3_large", 0.75, False): (155, 4.0, 73.3),
    ("mobilenet_v3_large", 1.0, True): (209, 3.9, 72.3),
    ("mobilenet_v3_small", 1.0, False): (66, 2.9, 68.1),
    ("mobilenet_v3_small", 0.75, False): (44, 2.4, 65.4),
    ("mobilenet_v3_small", 1.0, True): (65, 2.0, 61.9),
}

# The seed comparison at 224 px: name -> (M params, M MACs, ImageNet top-1 %, source key).
BASELINES = {
    "mobilenet_v1": (4.2, 569, 70.6, "v1_paper"),
    "mobilenet_v2": (3.4, 300, 72.0, "v2_paper"),
    "mobilenet_v3_large": (5.4, 219, 75.2, "v3_paper"),
    "mobilenet_v3_small": (2.5, 56, 67.4, "v3_paper"),
    "resnet50": (25.557032, 4090, 76.13, "torchvision"),
    "vgg16": (138.357544, 15470, 71.59, "torchvision"),
}
