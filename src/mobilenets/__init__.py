"""mobilenets: MobileNet V1/V2 from the papers to a device."""

# No public function shares its module's name: `import mobilenets.profiling` is the module and
# `mobilenets.profile` the function (modules: profiling, evaluation, onnx_quant).
from ._version import __version__
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import ModelConfig
from .errors import MobilenetsError, UsageError
from .evaluation import evaluate
from .export import export_onnx
from .factory import create_model
from .fold import fold_bn
from .micro.codegen import generate_c
from .micro.export import export_tflite
from .micro.quantizer import quantize_int8
from .micro.reference import run_int8
from .onnx_quant import quantize_onnx
from .predict import Predictor
from .profiling import Report, profile
from .study import run_study
from .train import fit
from .weights import load_pretrained

__all__ = [
    "__version__",
    "Checkpoint",
    "ModelConfig",
    "MobilenetsError",
    "Predictor",
    "Report",
    "UsageError",
    "create_model",
    "evaluate",
    "export_onnx",
    "export_tflite",
    "fit",
    "fold_bn",
    "generate_c",
    "load_checkpoint",
    "load_pretrained",
    "profile",
    "quantize_int8",
    "quantize_onnx",
    "run_int8",
    "run_study",
    "save_checkpoint",
]
