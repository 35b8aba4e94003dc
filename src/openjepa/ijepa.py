"""The I-JEPA objective: context encoder, EMA target encoder and predictor in one module."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config_ranges import check_section
from .models.layers import gather_tokens
from .models.recompute import dropping_recomputable
from .models.predictor import VisionTransformerPredictor
from .models.vit import PRESETS, VisionTransformer, preset_name
from .regularizers import EMBEDDINGS, KINDS, Regularizer

LOSSES = ("smooth_l1", "mse")
TARGETS = ("features", "pixels")


@dataclass
class ModelConfig:
    """Architecture of an I-JEPA model (encoder preset, patching, predictor) and its loss."""

    arch: str = "vit_small"  # a preset of openjepa.models.PRESETS
    patch_size: int = 16
    img_size: int = 224
    in_chans: int = 3
    embed_dim: int | None = None  # None: the preset's; set to override it
    depth: int | None = None
    num_heads: int | None = None
    pred_depth: int = 6
    pred_emb_dim: int = 384
    pred_num_heads: int | None = None  # None: the encoder's head count, as in the released code
    drop_path_rate: float = 0.0
    loss: str = "smooth_l1"  # smooth_l1 (released recipe) or mse (the paper's text)
    target: str = "features"  # features (I-JEPA) or pixels (the paper's pixel-target ablation)
    patch_embed_gain: float | None = None  # None: the paper's init; a number: see VisionTransformer (small patches)
    # Beyond the paper (openjepa.regularizers): an anti-collapse term on the context encoder's output.
    regularizer: str = "none"  # none (the paper) | vicreg | sigreg
    regularizer_weight: float = 1.0
    regularizer_on: str = "pooled"  # pooled | content | pooled+content
    # None: a constant weight. f in (0, 1]: the weight falls by a half cosine to 0 over the first f of the
    # schedules' steps (optim.epochs, or the run's fitted length), and the rest of the run is the paper's objective.
    regularizer_fade: float | None = None

    def __post_init__(self):
        self.arch = preset_name(self.arch)
        if self.loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.target not in TARGETS:
            raise ValueError(f"model.target must be one of {TARGETS}, got {self.target!r}")
        if self.regularizer not in KINDS:
            raise ValueError(f"model.regularizer must be one of {KINDS}, got {self.regularizer!r}")
        if self.regularizer_on not in EMBEDDINGS:
            raise ValueError(f"model.regularizer_on must be one of {EMBEDDINGS}, got {self.regularizer_on!r}")
        check_section(self, "model")

    def encoder_kwargs(self) -> dict:
        preset = PRESETS[self.arch]
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim or preset.embed_dim,
            "depth": self.depth if self.depth is not None else preset.depth,
            "num_heads": self.num_heads or preset.num_heads,
            "mlp_ratio": preset.mlp_ratio,
            "drop_path_rate": self.drop_path_rate,
            "patch_embed_gain": self.patch_embed_gain,
        }

    def build_regularizer(self) -> Regularizer:
        return Regularizer(self.regularizer, self.regularizer_weight, self.regularizer_on)

    def to_dict(self) -> dict:
        return asdict(self)


def layer_norm_targets(features: torch.Tensor) -> torch.Tensor:
    """Targets are normalised over the feature dimension, without affine parameters."""
    return F.layer_norm(features, (features.shape[-1],))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, p*p*C]`` in the patch order of the encoder."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class IJEPA(nn.Module):
    """Owns the context encoder ``encoder``, the EMA ``target_encoder`` and the ``predictor``.

    ``forward(images, context_idx, target_idx)`` returns the loss of one batch. The target encoder takes no
    gradients and stays in eval mode; it moves only through :meth:`update_target`.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        predictor: VisionTransformerPredictor,
        loss: str = "smooth_l1",
        target: str = "features",
        regularizer: Regularizer | None = None,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.loss_name = loss
        self.target_type = target
        self.regularizer = regularizer or Regularizer()
        # What multiplies the regulariser's weight this step (model.regularizer_fade), None for 1: a tensor, so that
        # a compiled forward reads each new value without recompiling. Not a buffer: the checkpoint keys stay the
        # released ones, and a model built on the meta device for loading has nothing left unloaded.
        self.regularizer_factor: torch.Tensor | None = None
        self.selective_recompute = False

    def train(self, mode: bool = True) -> IJEPA:
        super().train(mode)
        self.target_encoder.eval()  # no drop-path or dropout on the teacher
        return self

    # -- the step --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_targets(self, images: torch.Tensor, target_idx: torch.Tensor,
                        pooled: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target blocks ``[M*B, Kt, D]`` (layer-normed target-encoder features, or normalised pixels) and the
        pooled target-encoder output ``[B, D]``. With pixel targets and ``pooled=False`` the target encoder is
        not run at all (its output is needed only for the pooled features): None takes their place."""
        if self.target_type == "pixels":
            pixels = patchify(images, self.encoder.patch_size)
            mean = self.target_encoder(images).mean(dim=1) if pooled else None
            return layer_norm_targets(gather_tokens(pixels, target_idx)), mean
        h = self.target_encoder(images)
        # The normalisation is per token: normalising only the gathered target tokens gives the same values.
        return layer_norm_targets(gather_tokens(h, target_idx)), h.mean(dim=1)

    def predict(self, images: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Predictions ``[M*B, Kt, D]`` of the target blocks from the context patches."""
        return self.encode_and_predict(images, context_idx, target_idx)[1]

    def encode_and_predict(self, images: torch.Tensor, context_idx: torch.Tensor,
                           target_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context encoder's output ``[B, Kc, D]`` and the predictions ``[M*B, Kt, D]`` made from it."""
        grid = self.encoder.patch_embed.grid_for(images.shape[-2], images.shape[-1])
        with self._activation_scope():
            z = self.encoder(images, context_idx)
            return z, self.predictor(z, context_idx, target_idx, grid)

    def _activation_scope(self) -> contextlib.AbstractContextManager:
        # A plain nullcontext when off: compiled graphs never meet the saved-tensor hooks (Inductor plans its own
        # recomputation).
        if self.selective_recompute and self.training and torch.is_grad_enabled() and (
            not torch.compiler.is_compiling()
        ):
            return dropping_recomputable()
        return contextlib.nullcontext()

    def set_selective_recompute(self, enable: bool = True) -> None:
        """Recompute LayerNorm and GELU outputs in backward instead of keeping them (about a third less
        activation memory for a few elementwise passes; gradients unchanged). See ``openjepa.models.recompute``."""
        self.selective_recompute = enable

    def criterion(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over blocks, patches and features (every block has the same size)."""
        if self.loss_name == "mse":
            return F.mse_loss(predictions, targets)
        return F.smooth_l1_loss(predictions, targets)

    def forward(self, images: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """Loss of one batch: ``criterion(predict(context), targets)`` (see docs/method.md for the equations), plus
        the regulariser's term when one is set (not in the paper; off by default)."""
        if target_idx.dim() == 2:
            target_idx = target_idx.unsqueeze(0)
        targets, _ = self.compute_targets(images, target_idx, pooled=False)
        z, predictions = self.encode_and_predict(images, context_idx, target_idx)
        loss = self.criterion(predictions, targets)
        if self.regularizer.active:  # beyond the paper: see openjepa.regularizers
            term = self.regularizer(z, context_idx, self.encoder.patch_embed.num_patches)
            loss = loss + (term if self.regularizer_factor is None else self.regularizer_factor * term)
        return loss

    def set_regularizer_factor(self, factor: float) -> None:
        """Scale the regulariser's weight by ``factor`` from the next forward on (the trainer's fade schedule)."""
        device = self.encoder.pos_embed.device
        if self.regularizer_factor is None or self.regularizer_factor.device != device:
            self.regularizer_factor = torch.tensor(float(factor), device=device)
        else:
            self.regularizer_factor.fill_(factor)  # in place: a compiled forward keeps reading the same tensor

    # -- teacher ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA: ``target = momentum * target + (1 - momentum) * encoder``, over all tensors in one fused call."""
        targets = list(self.target_encoder.parameters())
        sources = list(self.encoder.parameters())
        torch._foreach_lerp_(targets, sources, 1.0 - momentum)

    # -- optimisation ----------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """AdamW groups in the released order: encoder / predictor with weight decay, then encoder / predictor
        without it (biases and other 1-D parameters). ``WD_exclude`` (the released key) marks the groups that the
        weight-decay schedule leaves at 0."""

        def split(module: nn.Module, decay: bool) -> list[nn.Parameter]:
            return [p for n, p in module.named_parameters() if (("bias" not in n) and p.ndim != 1) == decay]

        return [
            {"params": split(self.encoder, True)},
            {"params": split(self.predictor, True)},
            {"params": split(self.encoder, False), "WD_exclude": True, "weight_decay": 0.0},
            {"params": split(self.predictor, False), "WD_exclude": True, "weight_decay": 0.0},
        ]


def build_ijepa(config: ModelConfig | None = None, **overrides) -> IJEPA:
    """Build context encoder, predictor and target encoder from a :class:`ModelConfig`.

    >>> model = build_ijepa(arch="vit_tiny", patch_size=4, img_size=32, pred_depth=2, pred_emb_dim=96)
    """
    cfg = config or ModelConfig()
    if overrides:
        cfg = ModelConfig(**{**asdict(cfg), **overrides})
    encoder = VisionTransformer(**cfg.encoder_kwargs())
    out_dim = encoder.embed_dim if cfg.target == "features" else cfg.patch_size**2 * cfg.in_chans
    predictor = VisionTransformerPredictor(
        grid_size=encoder.grid_size,
        embed_dim=encoder.embed_dim,
        predictor_embed_dim=cfg.pred_emb_dim,
        depth=cfg.pred_depth,
        num_heads=cfg.pred_num_heads or encoder.num_heads,
        drop_path_rate=cfg.drop_path_rate,
        out_dim=out_dim,
    )
    return IJEPA(encoder, predictor, loss=cfg.loss, target=cfg.target, regularizer=cfg.build_regularizer())
