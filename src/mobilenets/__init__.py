"""mobilenets: MobileNet V1/V2 from the papers to a device."""

# Functions that share their module's name (profile, evaluate, quantize) are bound here after
# their submodules are imported, so `mobilenets.evaluate` is always the function.
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import ModelConfig
from .errors import MobilenetsError, UsageError
from .evaluate import evaluate
from .export import export_onnx, fold_bn
from .models import create_model
from .predict import Predictor
from .profile import Report, profile
from .quantize import quantize
from .train import fit
from .weights import load_pretrained

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "ModelConfig",
    "MobilenetsError",
    "Predictor",
    "Report",
    "UsageError",
    "create_model",
    "evaluate",
    "export_onnx",
    "fit",
    "fold_bn",
    "load_checkpoint",
    "load_pretrained",
    "profile",
    "quantize",
    "save_checkpoint",
]
