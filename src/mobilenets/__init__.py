"""mobilenets: MobileNet V1/V2 from the papers to a device."""

from .config import ModelConfig
from .errors import MobilenetsError, UsageError
from .models import create_model
from .profile import Report, profile

__version__ = "0.1.0"

__all__ = ["ModelConfig", "MobilenetsError", "Report", "UsageError", "create_model", "profile"]
