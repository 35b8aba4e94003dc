"""Frozen features of a ViT encoder over a labelled dataset: extraction, pooling, and .npz / .safetensors files."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config_sections import POOLS
from ..errors import UserError
from ..models.vit import VisionTransformer

UNLABELLED = -1  # the label stored for samples that have none
FEATURE_SUFFIXES = (".npz", ".safetensors")


@dataclass
class Features:
    """Pooled features ``x`` ``[N, F]`` (float32, CPU) and integer labels ``y`` ``[N]`` (-1: unlabelled)."""

    x: torch.Tensor
    y: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: checkpoint, encoder, pool, split ...

    def __post_init__(self):
        if self.x.dim() != 2:
            raise ValueError(f"features must be a [N, F] matrix, got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or len(self.y) != len(self.x):
            raise ValueError(f"labels must be a vector of {len(self.x)} entries, got shape {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def has_labels(self) -> bool:
        return len(self.y) > 0 and bool((self.y >= 0).all())

    def subset(self, indices: torch.Tensor) -> Features:
        return Features(self.x[indices], self.y[indices], dict(self.meta))


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA when available, else Apple's MPS, else the CPU; otherwise the named device, checked."""
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but this machine has no usable CUDA GPU; use --device cpu")
    return device


def unwrap_encoder(encoder: nn.Module) -> VisionTransformer:
    """The VisionTransformer inside a DDP / torch.compile wrapper (their ``module`` / ``_orig_mod``)."""
    while not isinstance(encoder, VisionTransformer):
        inner = getattr(encoder, "module", None)
        if inner is None:
            inner = getattr(encoder, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"expected an openjepa VisionTransformer encoder, got {type(encoder).__name__}")
        encoder = inner
    return encoder


def pool_features(encoder: VisionTransformer, images: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """``[B, C, H, W] -> [B, F]``. ``mean``: patch average of the final (normed) output, F = D.
    ``concat4``: patch averages of the last 4 blocks' outputs, each through the final norm, concatenated, F = 4D."""
    if pool == "mean":
        return encoder(images).mean(dim=1)
    if pool == "concat4":
        if encoder.depth < 4:
            raise UserError(f"pool 'concat4' needs an encoder with at least 4 blocks; this one has "
                            f"{encoder.depth}. Use pool 'mean'.")
        return torch.cat([h.mean(dim=1) for h in encoder.get_intermediate_layers(images, 4)], dim=1)
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images and labels of a collated batch: ``(images, labels, ...)``, or images alone."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        return batch[0], labels
    raise TypeError(
        f"the dataset must yield an image tensor or (image tensor, label, ...) tuples; a batch was a "
        f"{type(batch).__name__}"
    )


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A sequential loader. It has its own generator: iterating a DataLoader otherwise draws its base seed from
    the global RNG, which would change the course of a training run that evaluates on the side."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))


def _default_device(encoder: nn.Module) -> torch.device:
    param = next(encoder.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def extract_features(
    encoder: nn.Module,
    data: Dataset | DataLoader,
    pool: str = "mean",
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "features",
) -> Features:
    """Pooled features of every sample of ``data`` (a dataset of ``(image, label)`` or a DataLoader).

    The encoder runs in eval mode under ``torch.inference_mode`` and is put back in its previous mode afterwards.
    ``device``: where to compute (default: the encoder's device; the encoder is moved there if it differs).
    ``autocast_dtype``: e.g. ``torch.bfloat16`` for mixed precision on GPU; features are returned as float32.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    vit = unwrap_encoder(encoder)
    device = torch.device(device) if device is not None else _default_device(vit)
    if _default_device(vit) != device:
        vit.to(device)
    loader = data if isinstance(data, DataLoader) else make_loader(
        data, batch_size, num_workers, pin_memory=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    xs, ys = [], []
    was_training = vit.training
    vit.eval()
    try:
        with torch.inference_mode(), autocast:
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
                images, labels = _split_batch(batch)
                xs.append(pool_features(vit, images.to(device, non_blocking=True), pool).float().cpu())
                ys.append(labels.long().cpu() if labels is not None else
                          torch.full((len(images),), UNLABELLED, dtype=torch.long))
    finally:
        vit.train(was_training)
    if not xs:
        raise UserError("cannot extract features from an empty dataset")
    return Features(torch.cat(xs), torch.cat(ys), {"pool": pool})


# -- files ----------------------------------------------------------------------------------------------------------
def save_features(features: Features, path: str | os.PathLike) -> Path:
    """Write ``features`` (key ``features``), ``labels`` and the provenance (JSON) to ``.npz`` or ``.safetensors``."""
    path = Path(path)
    if path.suffix not in FEATURE_SUFFIXES:
        raise UserError(f"feature file {path} must end in .npz or .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(features.meta, sort_keys=True)
    x, y = features.x.contiguous(), features.y.contiguous()
    if path.suffix == ".npz":
        np.savez(path, features=x.numpy(), labels=y.numpy(), meta=np.array(meta))
    else:
        from safetensors.torch import save_file

        save_file({"features": x, "labels": y}, str(path), metadata={"openjepa": meta})
    return path


def load_features(path: str | os.PathLike) -> Features:
    """Read a file written by :func:`save_features` (or any .npz / .safetensors with ``features`` and ``labels``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist (write one with `openjepa embed`)")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else {}
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads((f.metadata() or {}).get("openjepa", "{}"))
    else:
        raise UserError(f"feature file {path} must end in .npz or .safetensors")
    missing = {"features", "labels"} - set(tensors)
    if missing:
        raise UserError(f"feature file {path} lacks {', '.join(sorted(missing))}; it holds {sorted(tensors)}")
    return Features(tensors["features"].float(), tensors["labels"].long(), meta)
