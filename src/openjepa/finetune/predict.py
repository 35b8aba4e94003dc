"""Predictions of a fine-tuned classifier for a folder of images (any depth; unreadable files reported, not fatal)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.folder import check_folder, list_images
from ..data.images import Picture, UnreadableImage
from ..data.transforms import EvalTransform
from ..errors import DataError
from ..models.classifier import ViTClassifier
from ..pretrained import ClassifierInfo


@dataclass
class Prediction:
    path: str  # relative to the folder
    classes: list[str]  # the top-k class names, most probable first
    probabilities: list[float]


class ImageFiles(Dataset):
    """``(image tensor, index)`` of image files; an unreadable file gives a zero image and index ``-1 - i``."""

    def __init__(self, root: Path, files: list[str], transform: EvalTransform):
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            with Picture(str(self.root / self.files[i])) as picture:
                return self.transform(picture), i
        except UnreadableImage:
            return torch.zeros(self.transform.channels, *self.transform.out_hw), -1 - i


def predict_folder(model: ViTClassifier, info: ClassifierInfo, folder: str | os.PathLike, top_k: int = 1,
                   batch_size: int = 256, device: str | torch.device = "cpu", num_workers: int = 0,
                   progress: bool = True) -> tuple[list[Prediction], list[str]]:
    """The ``top_k`` classes (and their softmax probabilities) of every image under ``folder``, and the relative
    paths of the files that could not be read. Images get the evaluation view of fine-tuning: resized and centre
    cropped to the classifier's input size, normalised as in training."""
    root = check_folder(folder, "folder", "a folder of images to classify")
    files = list_images(root).files
    if not files:
        raise DataError(f"no images found in {root}")
    encoder = model.encoder
    transform = EvalTransform(tuple(encoder.patch_embed.img_size), encoder.in_chans, tuple(info.mean),
                              tuple(info.std))
    loader = DataLoader(ImageFiles(root, files, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, generator=torch.Generator().manual_seed(0))
    model = model.eval().to(device)
    k = min(top_k, model.num_classes)
    predictions, unreadable = [], []
    with torch.inference_mode():
        for images, indices in tqdm(loader, desc="predict", disable=not progress, leave=False, unit="batch"):
            probs = model(images.to(device)).float().softmax(dim=1).cpu()
            values, top = probs.topk(k, dim=1)
            for i, v, t in zip(indices.tolist(), values.tolist(), top.tolist()):
                if i < 0:
                    unreadable.append(files[-1 - i])
                else:
                    predictions.append(Prediction(files[i], [info.classes[c] for c in t], v))
    return predictions, unreadable


def write_predictions(predictions: list[Prediction], out: str | os.PathLike) -> Path:
    """A CSV with ``path, class, probability`` (and ``class_2, probability_2`` ... for top-k)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    k = max((len(p.classes) for p in predictions), default=1)
    header = ["path", "class", "probability"]
    for j in range(2, k + 1):
        header += [f"class_{j}", f"probability_{j}"]
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in predictions:
            row = [p.path]
            for name, prob in zip(p.classes, p.probabilities):
                row += [name, f"{prob:.6f}"]
            writer.writerow(row)
    return out
