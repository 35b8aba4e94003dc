"""Patch features as colours: the first three principal components of an encoder's patch features as RGB.

One PCA is fitted on the patches of all the images shown, so that a colour means the same direction of feature
space in every image: patches that the encoder represents alike get alike colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data import DataConfig
from ..models.vit import VisionTransformer
from ..pretrained import TrainedModel
from .draw import INK, MUTED, SMALL_SIZE, TITLE_SIZE, TileLayout, fit_text, new_canvas, put_text
from .images import display_scale, enlarge
from .inputs import eval_images

HEADER = 66
PAIR_GAP = 4  # between an image and its feature map


@dataclass
class PatchPCA:
    """Per-image RGB maps ``[N, rows, cols, 3]`` (0..1), the share of variance of each component, and the share
    of all feature variance that patch position alone explains (over the images given)."""

    rgb: np.ndarray
    explained: tuple[float, ...]
    positional: float


def positional_share(features: torch.Tensor) -> float:
    """Share of the variance of ``[N, rows, cols, D]`` features explained by patch position: 1 - (variance
    around each position's mean over the N images) / (total variance). Near 1: the features encode where a patch
    is, not what it shows (typical of an untrained or collapsed encoder)."""
    x = features.double().flatten(1, 2)  # [N, P, D]
    total = (x - x.mean((0, 1))).pow(2).mean()
    within = (x - x.mean(0)).pow(2).mean()
    return float(1 - within / total) if total > 0 else 1.0


@torch.inference_mode()
def patch_features(encoder: VisionTransformer, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Final (normed) patch features ``[N, rows, cols, D]`` of ``images`` ``[N, C, H, W]``, in eval mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        rows, cols = encoder.patch_embed.grid_for(images.shape[-2], images.shape[-1])
        out = [encoder(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        encoder.train(was_training)
    features = torch.cat(out)
    return features.reshape(len(images), rows, cols, features.shape[-1])


def patch_pca(features: torch.Tensor, components: int = 3, clip: float = 0.01) -> PatchPCA:
    """Project ``[N, rows, cols, D]`` features on their first ``components`` principal directions (fitted on all
    N * rows * cols patches together) and scale each component to 0..1 between its ``clip`` and ``1 - clip``
    quantiles, so that a few extreme patches do not wash out the rest.

    Each direction's sign is chosen so that its long tail is positive (a deterministic choice: the colours of a
    picture do not flip from one run of the command to the next).
    """
    n, rows, cols, dim = features.shape
    x = features.reshape(-1, dim).double()
    x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(components, vh.shape[0])
    projected = x @ vh[:k].T
    skew = (projected**3).mean(0)
    projected = projected * torch.where(skew < 0, -1.0, 1.0)
    lo = torch.quantile(projected, clip, dim=0)
    hi = torch.quantile(projected, 1 - clip, dim=0)
    scaled = ((projected - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    if k < components:  # fewer patches or dimensions than components: leave the missing channels mid-grey
        scaled = torch.cat([scaled, torch.full((len(scaled), components - k), 0.5, dtype=scaled.dtype)], 1)
    variance = s**2
    explained = tuple(float(v) for v in (variance[:k] / variance.sum().clamp_min(1e-12)))
    return PatchPCA(scaled.reshape(n, rows, cols, components).float().numpy(), explained,
                    positional_share(features) if n > 1 else float("nan"))


def feature_picture_layout(count: int, image_px: int, columns: int = 4) -> TileLayout:
    """Layout of :func:`render_feature_pca`: one tile per (image, feature map) pair, ``columns`` pairs a row."""
    side = image_px * display_scale(image_px)
    return TileLayout(count, min(columns, count), (2 * side + PAIR_GAP, side), caption=18, header=HEADER)


def render_feature_pca(
    pixels: np.ndarray,
    pca: PatchPCA,
    title: str,
    captions: list[str] | None = None,
    columns: int = 4,
) -> Image.Image:
    """Each image (uint8 ``[N, H, W, 3]``) next to its patch-feature PCA map, enlarged to the image's size with
    one flat square per patch (the resolution the encoder actually has)."""
    count, image_px = pixels.shape[0], pixels.shape[1]
    layout = feature_picture_layout(count, image_px, columns)
    scale = display_scale(image_px)
    side = image_px * scale
    image, draw = new_canvas(*layout.size)
    width = layout.size[0] - 2 * layout.margin
    put_text(draw, (layout.margin, layout.margin), fit_text(title, width, TITLE_SIZE), TITLE_SIZE, INK)
    shares = ", ".join(f"{100 * e:.0f}%" for e in pca.explained)
    notes = (f"right of each image: its patch features' first {len(pca.explained)} principal components as red, "
             f"green, blue (one PCA over all {count} images; they explain {shares} of the variance)",
             f"patch position alone explains {100 * pca.positional:.0f}% of the feature variance over these images "
             f"(near 100%: features say where a patch is, not what it shows)")
    for i, note in enumerate(notes if count > 1 else notes[:1]):
        put_text(draw, (layout.margin, layout.margin + 24 + 17 * i), fit_text(note, width, SMALL_SIZE), SMALL_SIZE,
                 MUTED)
    for i in range(count):
        x, y = layout.origin(i)
        image.paste(enlarge(pixels[i], scale), (x, y))
        colours = (pca.rgb[i] * 255).round().astype(np.uint8)
        feature_map = Image.fromarray(colours, "RGB").resize((side, side), Image.Resampling.NEAREST)
        image.paste(feature_map, (x + side + PAIR_GAP, y))
        if captions:
            put_text(draw, (x + side + PAIR_GAP / 2, y + side + 3),
                     fit_text(captions[i], 2 * side, SMALL_SIZE), SMALL_SIZE, MUTED, "ma")
    return image


def features_picture(trained: TrainedModel, data: DataConfig | None = None, split: str = "test", count: int = 8,
                     which: str = "target", seed: int = 0, columns: int = 4) -> Image.Image:
    """PCA pictures of ``count`` images of ``split`` (default: the run's own dataset) from the ``target`` (EMA,
    default) or ``context`` encoder of a trained model."""
    encoders = {"target": trained.model.target_encoder, "context": trained.model.encoder}
    if which not in encoders:
        raise ValueError(f"which must be 'target' or 'context', got {which!r}")
    data = data or trained.config.data
    batch = eval_images(data, trained.config, split, count, seed)
    pca = patch_pca(patch_features(encoders[which], batch.images))
    m = trained.config.model
    title = (f"Patch features of the {which} encoder ({m.arch}/{m.patch_size}, {m.img_size}px) on "
             f"{data.dataset} {split} images")
    captions = [batch.class_name(int(label)) for label in batch.labels]
    return render_feature_pca(batch.pixels, pca, title, captions, columns)
