"""Deprecated module: strict loading and safetensors reading live in :mod:`openjepa.checkpoint`, building models to
load in :mod:`openjepa.pretrained`, export files in :mod:`openjepa.interop.export_files`."""

import warnings

from ..checkpoint import describe_misfits, load_safetensors, load_strict, misfits
from ..pretrained import as_float32, build_for_loading, with_pos_embed_for
from .export_files import read_json, save_safetensors, write_json

warnings.warn("openjepa.interop.weights is deprecated: see openjepa.checkpoint, openjepa.pretrained and "
              "openjepa.interop.export_files", DeprecationWarning, stacklevel=2)

__all__ = ["as_float32", "build_for_loading", "describe_misfits", "load_safetensors", "load_strict", "misfits",
           "read_json", "save_safetensors", "write_json", "with_pos_embed_for"]
