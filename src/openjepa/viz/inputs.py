"""What the pictures are drawn from: images of a dataset split or of a training step, with the normalisation to undo
(trained models come from :func:`openjepa.pretrained.load_trained`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import RunConfig, accumulation_steps
from ..config_sections import DataConfig
from ..data.loader import build_eval_dataset, build_pretrain_loader, check_channels, normalisation
from ..errors import UserError
from ..masks import BlockMasks
from .images import denormalise


@dataclass
class ImageBatch:
    """Normalised model inputs, their labels, and everything needed to show them."""

    images: torch.Tensor  # [N, C, H, W], normalised as for the model
    labels: torch.Tensor  # [N], -1 where unknown
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    dataset: str = ""

    @property
    def pixels(self) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` for display."""
        return denormalise(self.images, self.mean, self.std)

    def class_name(self, label: int) -> str:
        if 0 <= label < len(self.classes):
            return self.classes[label]
        return str(label) if label >= 0 else ""

    def subset(self, indices: slice | torch.Tensor) -> ImageBatch:
        return replace(self, images=self.images[indices], labels=self.labels[indices])


def spread_indices(total: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct indices of ``range(total)`` in a random but reproducible order (all when fewer)."""
    return np.random.default_rng(seed).permutation(total)[:count]


def eval_images(data: DataConfig, config: RunConfig, split: str, count: int, seed: int = 0,
                skip: int = 0) -> ImageBatch:
    """``count`` images of ``split`` through the deterministic evaluation transform (resize + centre crop),
    chosen at random with ``seed``; ``skip`` leaves out the first indices of that random order (so that two calls
    with the same seed give disjoint sets)."""
    dataset = build_eval_dataset(data, config.model, split)
    if len(dataset) <= skip:
        raise UserError(f"the {data.dataset} {split} split has only {len(dataset)} images; fewer are needed here")
    chosen = spread_indices(len(dataset), skip + count, seed)[skip:]
    # disable=None: a progress bar on terminals only (decoding hundreds of large photos takes a while)
    samples = [dataset[int(i)] for i in tqdm(chosen, desc=f"{data.dataset} {split} images", unit="image",
                                             leave=False, disable=None if len(chosen) > 64 else True)]
    mean, std = normalisation(data, dataset.source, check_channels(config.model))
    return ImageBatch(torch.stack([s[0] for s in samples]), torch.tensor([int(s[1]) for s in samples]),
                      tuple(mean), tuple(std), tuple(dataset.classes), data.dataset)


def training_batch(config: RunConfig, epoch: int = 0, step: int = 0, count: int | None = None
                   ) -> tuple[ImageBatch, BlockMasks]:
    """The images (random crops included) and masks of training step ``step`` of epoch ``epoch`` exactly as a
    single-process run of ``config`` draws them (first ``count`` images of the step's first micro-batch)."""
    data = replace(config.data, num_workers=0, pin_memory=False)  # one batch: no worker processes
    loaded = build_pretrain_loader(data, config.model, config.mask, config.train.seed,
                                   accum_steps=accumulation_steps(config, 1))
    if step >= loaded.steps_per_epoch:
        raise UserError(f"step {step} is past the end of an epoch ({loaded.steps_per_epoch} steps of "
                        f"{config.data.batch_size * loaded.accum_steps} images); choose --step below "
                        f"{loaded.steps_per_epoch}")
    loaded.set_epoch(epoch, step)
    batch = next(iter(loaded.loader))
    n = len(batch.images) if count is None else min(count, len(batch.images))
    source = loaded.dataset.source
    images = ImageBatch(batch.images[:n], batch.labels[:n], tuple(loaded.mean), tuple(loaded.std),
                        tuple(source.classes), config.data.dataset)
    return images, BlockMasks(batch.context[:n], batch.targets[:, :n])
