"""Pictures of what I-JEPA trains on and learns, drawn with Pillow alone (no plotting library needed).

* :func:`masks_picture`: the context and target blocks of a training step over the images of that step;
* :func:`features_picture`: the first three principal components of an encoder's patch features as RGB;
* :func:`save_run_plot` / :func:`render_run`: the training curves of a run folder;
* :func:`predictions_picture`: nearest-neighbour retrieval of predicted and true target patches.

Each returns a ``PIL.Image`` (``save_run_plot`` writes its PNG directly); :func:`save_png` writes one.
The ``openjepa viz`` command wraps them. Names are imported on first use, so that the trainer's import of
``openjepa.viz.run`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "masks_picture": "masks",
    "render_masks": "masks",
    "training_masks": "masks",
    "features_picture": "features",
    "patch_pca": "features",
    "render_feature_pca": "features",
    "render_run": "run",
    "read_run": "run",
    "save_run_plot": "run",
    "predictions_picture": "predictions",
    "predict_and_retrieve": "predictions",
    "render_predictions": "predictions",
    "load_trained": "sources",
    "save_png": "draw",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
