"""What fine-tuning trains: the classifier, with its head reading batch-normalised features during training.

Mean-pooled ViT features share a large common part and differ little between images (at random initialisation,
or after short pretraining, by a few per cent of their size). A linear head on them is badly conditioned: it needs
large weights to separate the images, and those weights turn the small, common drift that every update of the
encoder causes into large swings of the logits (the loss explodes within an epoch). With ``finetune.head_norm``
(default) the head reads the features standardised by the statistics of the (global) batch, as MAE does for its
linear probes: a BatchNorm without affine parameters. Nothing of it is left in the classifier that is saved or
exported: at evaluation the running statistics make it an affine map, which is folded into the head's weights
(``W' = W / sqrt(var + eps)``, ``b' = b - W' mean``), so the saved network is the plain encoder + linear head of
``IJepaForImageClassification``. (The encoder's final LayerNorm scale and shift, which the head norm cancels,
are not trained meanwhile.) Before every evaluation the statistics are measured afresh on a fixed set of
training images ("precise BN"), so the evaluated and saved network is the one training converged to.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from ..eval.probe import LinearClassifier
from ..models.classifier import ViTClassifier

NORM_EPS = 1e-6  # small: the features' spread between images can itself be ~1e-3
MOMENTUM = 0.1  # of the running statistics, as torch's BatchNorm


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the processes of a torchrun job, differentiable (the gradient reaches every process's inputs)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist_fn.all_reduce(t)
    return t


class GlobalBatchNorm(nn.Module):
    """BatchNorm without affine parameters over the global batch of all processes (one process: exactly
    ``nn.BatchNorm1d(affine=False)`` with a small epsilon). Running variance unbiased, as torch's."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return (x - self.running_mean) / torch.sqrt(self.running_var + NORM_EPS)
        count = _global_sum(torch.tensor(float(len(x)), device=x.device))
        mean = _global_sum(x.sum(0)) / count
        centred = x - mean
        var = _global_sum(centred.square().sum(0)) / count  # two passes: precise when the mean dwarfs the spread
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach(), MOMENTUM)
            self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), MOMENTUM)
        return centred / torch.sqrt(var + NORM_EPS)


class FinetuneNet(nn.Module):
    """The classifier being trained: ``head(norm(features))`` (``norm``: :class:`GlobalBatchNorm`, or nothing).
    :meth:`folded` gives the equivalent plain :class:`ViTClassifier` (evaluation mode)."""

    def __init__(self, classifier: ViTClassifier, head_norm: bool = True):
        super().__init__()
        self.classifier = classifier
        self.norm = GlobalBatchNorm(classifier.encoder.embed_dim) if head_norm else None

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.classifier.features(images)
        if self.norm is not None:
            features = self.norm(features)
        return self.classifier.head(features)

    @torch.no_grad()
    def set_statistics(self, features: torch.Tensor) -> None:
        """Running statistics = the exact mean and (unbiased) variance of ``features`` [N, D] ("precise BN", Wu &
        Johnson 2021): the moving averages of training lag behind an encoder that changes every step."""
        if self.norm is not None:
            self.norm.running_mean.copy_(features.mean(0))
            self.norm.running_var.copy_(features.var(0, unbiased=len(features) > 1))

    @torch.no_grad()
    def folded(self) -> ViTClassifier:
        """A copy of the classifier with the normalisation (running statistics) folded into its head."""
        out = copy.deepcopy(self.classifier).eval()
        if self.norm is not None:
            scale = torch.rsqrt(self.norm.running_var + NORM_EPS)
            out.head.weight.mul_(scale)
            out.head.bias.sub_(out.head.weight @ self.norm.running_mean)
        return out

    @torch.no_grad()
    def start_from_probe(self, probe: LinearClassifier) -> None:
        """Set the head (and the normalisation's statistics) so that the network computes the linear probe
        ``probe``: ``((x - mean) / std) @ weight + bias`` over its classes ``probe.classes``; a class the probe never
        saw gets zero weights and the lowest bias."""
        head = self.classifier.head
        weight, bias = probe.weight.T.to(head.weight), probe.bias.to(head.bias)  # [C_seen, F], [C_seen]
        mean, std = probe.mean.to(head.weight), probe.std.to(head.weight)
        if self.norm is not None:
            self.norm.running_mean.copy_(mean)
            self.norm.running_var.copy_((std.square() - NORM_EPS).clamp(min=0))
        else:  # fold the standardisation into the head
            weight, bias = weight / std, bias - (weight / std) @ mean
        head.weight.zero_()
        head.bias.fill_(float(bias.min()))
        head.weight[probe.classes] = weight
        head.bias[probe.classes] = bias
