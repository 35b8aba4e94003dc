"""Does the predictor predict semantics? Nearest-neighbour retrieval of predicted and true target patches.

For a few query images, masks are drawn as in training; the predictor's output for a target patch and the true
target (the layer-normed target-encoder feature of that patch) are both looked up, by cosine similarity, in a
bank of the layer-normed target features of every patch of other images. When the predictor has learnt
something, the patches retrieved for its prediction (a) resemble those retrieved for the truth (b).

Similarities are cosines after subtracting the bank's mean feature: patch features share a large common
component (more so early in training), which would otherwise make every patch look alike and let a few "hub"
patches be everybody's nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..data import DataConfig
from ..ijepa import IJEPA, layer_norm_targets
from ..masks import BlockMasks, build_mask_sampler
from ..pretrained import TrainedModel
from ..seeding import seeded_generator
from .draw import INK, MUTED, SMALL_SIZE, TITLE_SIZE, fit_text, new_canvas, put_text
from .images import crop_around, display_scale
from .inputs import eval_images
from .masks import overlay_masks, patch_grid_of

CROP_PX = 96  # side of a retrieved patch's crop (the patch and one patch of context around it)
MARGIN = 12
GAP = 8
SECTION_GAP = 22
HEADER = 92
COLUMN_TITLES = 20
CAPTION = 16
HIGHLIGHT = (255, 255, 255)


@dataclass
class PatchBank:
    """Layer-normed target-encoder features of every patch of ``len(labels)`` images, centred on their mean and
    scaled to unit length."""

    features: torch.Tensor  # [images * patches, D]
    mean: torch.Tensor  # [D], subtracted from every feature compared with the bank
    pixels: np.ndarray  # uint8 [images, H, W, 3], for the crops
    labels: torch.Tensor  # [images]
    grid: tuple[int, int]

    @property
    def patches_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Features (layer-normed target space) brought into the bank's space: centred, unit length."""
        return F.normalize(features - self.mean, dim=-1)

    def locate(self, row: int) -> tuple[int, int]:
        """Image number and patch index of a bank row."""
        return divmod(int(row), self.patches_per_image)


@torch.inference_mode()
def target_patch_features(model: IJEPA, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Layer-normed target-encoder features ``[N, patches, D]``: exactly the space the targets live in."""
    device = next(model.parameters()).device
    starts = range(0, len(images), batch_size)
    bar = tqdm(starts, desc="bank features", unit="batch", leave=False, disable=None if len(starts) > 1 else True)
    out = [layer_norm_targets(model.target_encoder(images[i:i + batch_size].to(device))).float().cpu() for i in bar]
    return torch.cat(out)


def build_bank(model: IJEPA, images: torch.Tensor, labels: torch.Tensor, pixels: np.ndarray,
               batch_size: int = 64) -> PatchBank:
    """The retrieval database of ``images`` (``[N, C, H, W]``, normalised as for the model)."""
    grid = model.target_encoder.patch_embed.grid_for(images.shape[-2], images.shape[-1])
    features = target_patch_features(model, images, batch_size)
    features = features.reshape(-1, features.shape[-1])
    mean = features.mean(0)
    return PatchBank(F.normalize(features - mean, dim=-1), mean, pixels, labels, grid)


@dataclass
class QueryResult:
    """The retrievals of one shown patch (block ``block`` of query ``image``, grid patch ``patch``)."""

    image: int
    block: int
    patch: int
    cosine: float  # between the prediction and the true target (centred like the bank)
    predicted: list[tuple[int, float]]  # (bank row, similarity), best first
    true: list[tuple[int, float]]


@dataclass
class RetrievalSummary:
    """Statistics over every target patch of every block of every query image."""

    patches: int
    mean_cosine: float
    same_top1: float  # fraction of patches whose prediction and truth retrieve the same bank patch first
    predicted_label_agreement: float | None  # fraction of the k neighbours from the query's class (None: no labels)
    true_label_agreement: float | None
    chance_label_agreement: float | None


@torch.inference_mode()
def predict_and_retrieve(model: IJEPA, images: torch.Tensor, labels: torch.Tensor, masks: BlockMasks,
                         bank: PatchBank, k: int = 5) -> tuple[list[QueryResult], RetrievalSummary]:
    """Predict every target block of the query ``images`` from their context, look predictions and true targets
    up in ``bank``, and return the first block's centre patch of each query plus statistics over all patches."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = images.to(device)
        context, targets = masks.context.to(device), masks.targets.to(device)
        predicted = bank.embed(model.predict(x, context, targets).float().cpu())  # [M*B, Kt, D]
        true = bank.embed(model.compute_targets(x, targets)[0].float().cpu())
    finally:
        model.train(was_training)
    k = min(k, len(bank.features))
    sims_pred, rows_pred = (predicted @ bank.features.T).topk(k, dim=-1)  # [M*B, Kt, k]
    sims_true, rows_true = (true @ bank.features.T).topk(k, dim=-1)
    cosine = (predicted * true).sum(-1)  # [M*B, Kt]
    summary = _summarise(cosine, rows_pred, rows_true, labels, masks, bank)
    batch, block_len = images.shape[0], masks.targets.shape[-1]
    shape = _block_shape(masks.targets[0, 0], bank.grid[1])
    centre = (shape[0] // 2) * shape[1] + shape[1] // 2  # row-major position of the block's centre patch
    results = []
    for b in range(batch):
        row = b  # block 0 of image b (block-major order)
        results.append(QueryResult(
            image=b, block=0, patch=int(masks.targets[0, b, min(centre, block_len - 1)]),
            cosine=float(cosine[row, centre]),
            predicted=list(zip(rows_pred[row, centre].tolist(), sims_pred[row, centre].tolist())),
            true=list(zip(rows_true[row, centre].tolist(), sims_true[row, centre].tolist())),
        ))
    return results, summary


def _block_shape(indices: torch.Tensor, grid_cols: int) -> tuple[int, int]:
    rows, cols = indices // grid_cols, indices % grid_cols
    return int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1


def _summarise(cosine, rows_pred, rows_true, labels, masks, bank) -> RetrievalSummary:
    same_top1 = float((rows_pred[..., 0] == rows_true[..., 0]).float().mean())
    agreement = [None, None, None]
    labelled = labels.numel() and bool((labels >= 0).all()) and bool((bank.labels >= 0).all())
    if labelled:
        num_blocks = masks.targets.shape[0]
        query_labels = labels.repeat(num_blocks).view(-1, 1, 1)  # block-major rows: m * B + b
        for i, rows in enumerate((rows_pred, rows_true)):
            neighbour_labels = bank.labels[rows // bank.patches_per_image]
            agreement[i] = float((neighbour_labels == query_labels).float().mean())
        frequency = torch.bincount(bank.labels, minlength=int(labels.max()) + 1).float() / len(bank.labels)
        agreement[2] = float(frequency[labels].mean())  # expected agreement of neighbours drawn at random
    return RetrievalSummary(cosine.numel(), float(cosine.mean()), same_top1, *agreement)


# -- the picture ------------------------------------------------------------------------------------------------------
def prediction_picture_size(queries: int, k: int, image_px: int) -> tuple[int, int]:
    """Pixel size of :func:`render_predictions` for ``queries`` rows of ``k`` neighbours each."""
    query_side = image_px * display_scale(image_px)
    row_height = max(query_side, CROP_PX) + CAPTION
    width = 2 * MARGIN + query_side + GAP + CROP_PX + 2 * SECTION_GAP + 2 * (k * CROP_PX + (k - 1) * GAP)
    height = 2 * MARGIN + HEADER + COLUMN_TITLES + queries * row_height + (queries - 1) * GAP
    return width, height


def _crop_tile(pixels: np.ndarray, patch: int, patch_size: int, grid: tuple[int, int]) -> Image.Image:
    """The patch with one patch of surroundings, enlarged to CROP_PX, the patch itself outlined."""
    row, col = divmod(patch, grid[1])
    crop, (r, c) = crop_around(pixels, row, col, patch_size, grid)
    scale_y, scale_x = CROP_PX / crop.shape[0], CROP_PX / crop.shape[1]
    tile = Image.fromarray(np.ascontiguousarray(crop), "RGB").resize((CROP_PX, CROP_PX), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(tile)
    box = (c * patch_size * scale_x, r * patch_size * scale_y, (c + 1) * patch_size * scale_x - 1,
           (r + 1) * patch_size * scale_y - 1)
    draw.rectangle(box, outline=(0, 0, 0), width=3)
    draw.rectangle(box, outline=HIGHLIGHT, width=1)
    return tile


def render_predictions(
    pixels: np.ndarray,
    masks: BlockMasks,
    results: list[QueryResult],
    summary: RetrievalSummary,
    bank: PatchBank,
    patch_size: int,
    title: str,
    class_names: tuple[str, ...] = (),
    labels: torch.Tensor | None = None,
) -> Image.Image:
    """One row per query: the image (context tinted, shown target block outlined), the target patch, then the
    nearest bank patches of (a) the prediction and (b) the true target, with similarities and classes."""
    k = len(results[0].predicted) if results else 0
    image_px = pixels.shape[1]
    width, height = prediction_picture_size(len(results), k, image_px)
    image, draw = new_canvas(width, height)
    _draw_header(draw, width, title, summary, bank)
    scale = display_scale(image_px)
    query_side = image_px * scale
    row_height = max(query_side, CROP_PX) + CAPTION
    x_crop = MARGIN + query_side + GAP
    x_pred = x_crop + CROP_PX + SECTION_GAP
    x_true = x_pred + k * (CROP_PX + GAP) - GAP + SECTION_GAP
    top = MARGIN + HEADER
    for x, label in ((MARGIN, "query"), (x_crop, "target patch"), (x_pred, "(a) nearest to the prediction"),
                     (x_true, "(b) nearest to the true target")):
        put_text(draw, (x, top), label, SMALL_SIZE + 1, INK)

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else (str(label) if label >= 0 else "")

    for i, res in enumerate(results):
        y = top + COLUMN_TITLES + i * (row_height + GAP)
        query = overlay_masks(pixels[res.image], masks.context[res.image], masks.targets[res.block:res.block + 1,
                              res.image], patch_size, scale, bank.grid)
        image.paste(query, (MARGIN, y))
        query_label = int(labels[res.image]) if labels is not None else -1
        put_text(draw, (MARGIN, y + query_side + 2), fit_text(name(query_label), query_side, SMALL_SIZE),
                 SMALL_SIZE, MUTED)
        image.paste(_crop_tile(pixels[res.image], res.patch, patch_size, bank.grid), (x_crop, y))
        put_text(draw, (x_crop, y + CROP_PX + 2), f"cos(a, b) {res.cosine:.2f}", SMALL_SIZE, MUTED)
        for x0, neighbours in ((x_pred, res.predicted), (x_true, res.true)):
            for j, (row, similarity) in enumerate(neighbours):
                source, patch = bank.locate(row)
                x = x0 + j * (CROP_PX + GAP)
                image.paste(_crop_tile(bank.pixels[source], patch, patch_size, bank.grid), (x, y))
                caption = " · ".join(filter(None, (f"{similarity:.2f}", name(int(bank.labels[source])))))
                put_text(draw, (x, y + CROP_PX + 2), fit_text(caption, CROP_PX, SMALL_SIZE), SMALL_SIZE, MUTED)
    return image


def _draw_header(draw: ImageDraw.ImageDraw, width: int, title: str, summary: RetrievalSummary,
                 bank: PatchBank) -> None:
    usable = width - 2 * MARGIN
    put_text(draw, (MARGIN, MARGIN), fit_text(title, usable, TITLE_SIZE), TITLE_SIZE, INK)
    lines = [
        f"Each row: a query image (tinted: context patches; outlined: one target block), the centre patch of that "
        f"block, and the patches among {len(bank.labels)} other images ({len(bank.features):,} patches)",
        "whose target-encoder features are closest (cosine after removing the mean feature; number under each crop) "
        "to (a) the predictor's output and (b) the true target. (a) like (b): the predictor predicts content.",
        f"Over all {summary.patches:,} target patches of these queries: mean cos(prediction, truth) "
        f"{summary.mean_cosine:.3f}; same nearest patch for (a) and (b): {100 * summary.same_top1:.0f}%"
        + (f"; neighbours from the query's class: (a) {100 * summary.predicted_label_agreement:.0f}%, "
           f"(b) {100 * summary.true_label_agreement:.0f}%, chance {100 * summary.chance_label_agreement:.0f}%"
           if summary.chance_label_agreement is not None else ""),
    ]
    for i, line in enumerate(lines):
        colour = INK if i == 2 else MUTED
        put_text(draw, (MARGIN, MARGIN + 26 + 18 * i), fit_text(line, usable, SMALL_SIZE), SMALL_SIZE, colour)


def predictions_picture(trained: TrainedModel, data: DataConfig | None = None, split: str = "test",
                        queries: int = 6, bank_images: int = 500, k: int = 5, seed: int = 0) -> Image.Image:
    """Retrieval picture for ``queries`` images of ``split`` against a bank of the patches of ``bank_images``
    other images of the same split (default dataset: the run's own). Masks are drawn by the training sampler
    from ``seed``."""
    data = data or trained.config.data
    cfg = trained.config
    batch = eval_images(data, cfg, split, queries, seed)
    others = eval_images(data, cfg, split, bank_images, seed, skip=queries)
    sampler = build_mask_sampler(patch_grid_of(cfg), cfg.mask)
    masks = sampler.sample(len(batch.images), seeded_generator(seed, len(batch.images)))
    bank = build_bank(trained.model, others.images, others.labels, others.pixels)
    results, summary = predict_and_retrieve(trained.model, batch.images, batch.labels, masks, bank, k)
    m = cfg.model
    title = (f"What the predictor predicts: {m.arch}/{m.patch_size} on {data.dataset} {split} images, nearest "
             f"neighbours among target-encoder patch features")
    return render_predictions(batch.pixels, masks, results, summary, bank, m.patch_size, title,
                              batch.classes, batch.labels)
