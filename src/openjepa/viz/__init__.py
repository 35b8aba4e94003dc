"""Pictures of what I-JEPA trains on and learns, drawn with Pillow alone (no plotting library needed).

* :func:`masks_picture`: the context and target blocks of a training step over the images of that step;
* :func:`features_picture`: the first three principal components of an encoder's patch features as RGB;
* :func:`save_run_plot` / :func:`render_run`: the training curves of a run folder;
* :func:`predictions_picture`: nearest-neighbour retrieval of predicted and true target patches.

Each returns a ``PIL.Image`` (``save_run_plot`` writes its PNG directly); :func:`save_png` writes one.
The ``openjepa viz`` command wraps them; :func:`load_trained` (from :mod:`openjepa.pretrained`) gives the model.
"""

from ..pretrained import load_trained
from .draw import save_png
from .features import features_picture, patch_pca, render_feature_pca
from .masks import masks_picture, render_masks, training_masks
from .predictions import predict_and_retrieve, predictions_picture, render_predictions
from .run import read_run, render_run, save_run_plot

__all__ = [
    "features_picture",
    "load_trained",
    "masks_picture",
    "patch_pca",
    "predict_and_retrieve",
    "predictions_picture",
    "read_run",
    "render_feature_pca",
    "render_masks",
    "render_predictions",
    "render_run",
    "save_png",
    "save_run_plot",
    "training_masks",
]
