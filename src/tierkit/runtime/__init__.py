"""Deploy-time runtime: read an export's manifest, pick the variant a device should run, and run it.

Imports only onnxruntime, numpy and the standard library, so it installs on devices without torch.
"""

from tierkit.runtime.device import DeviceInfo, detect_device
from tierkit.runtime.manifest import (
    SCHEMA_VERSION,
    ManifestError,
    load_manifest,
    sha256_of,
    validate_manifest,
    verify_file,
)
from tierkit.runtime.select import NoVariantFits, Selection, select_variant
from tierkit.runtime.session import open_session, predict

__all__ = [
    "SCHEMA_VERSION",
    "DeviceInfo",
    "ManifestError",
    "NoVariantFits",
    "Selection",
    "detect_device",
    "load_manifest",
    "open_session",
    "predict",
    "select_variant",
    "sha256_of",
    "validate_manifest",
    "verify_file",
]
