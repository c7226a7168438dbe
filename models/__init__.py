"""Super-resolution architectures with official key layouts, detection and safe loading.

Depends on nothing else in srserve; export, service and train build on it.
"""
from .adapter import SRNet
from .errors import SRError
from .registry import ARCHITECTURES, UnknownArchitecture, build_network, detect, get_spec, load_network, scales_of
from .spec import ArchSpec, InputConvention

__all__ = [
    "ARCHITECTURES", "ArchSpec", "SRError", "InputConvention", "SRNet", "UnknownArchitecture", "build_network", "detect",
    "get_spec", "load_network", "scales_of",
]
