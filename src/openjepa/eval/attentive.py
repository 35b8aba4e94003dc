"""Attentive probe: a small cross-attention pooler plus a linear classifier, trained on the frozen patch tokens.

A linear probe sees one average of the patch tokens; an attentive probe learns *where to look*: ``Q`` learnable
query tokens attend over all patch tokens of the frozen encoder (one multi-head cross-attention block with an
MLP, as in V-JEPA's evaluation), the queries' outputs are averaged, layer-normalised and classified linearly::

    kv = LayerNorm(tokens)                                  tokens [B, N, D] of the frozen encoder
    q  = queries + proj(MultiHeadAttention(queries, kv))    queries [Q, D], learnt
    q  = q + MLP(LayerNorm(q))
    logits = head(LayerNorm(mean over the Q queries of q))

Protocol (:func:`attentive_probe`): the learning rate and weight decay of AdamW are chosen on a stratified,
seeded held-out part of the TRAINING tokens (``holdout``, 10 %) -- each candidate pair is trained on the rest and
scored there, the best held-out top-1 wins (ties: lower held-out cross-entropy) -- then the probe is trained
again on all training tokens with the chosen pair and scored once on the test tokens. The test split plays no
part in any choice. Training is ``epochs`` passes of mini-batch AdamW with linear warm-up and cosine decay
(more passes on small training sets, so that every fit takes at least ``min_steps`` steps).

The frozen encoder runs once per image: its patch tokens are kept in memory (float16) when they fit in
``cache_gb``; otherwise they are recomputed for every mini-batch. With few queries, attention is computed without
forming the keys and values of every token (see :meth:`AttentivePooler.attend`), so a pass over cached tokens
costs about as much as a few linear layers per image and the whole sweep runs in seconds to minutes on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..errors import UserError
from ..models.layers import Mlp
from ..schedules import warmup_cosine
from .features import _split_batch, make_loader, unwrap_encoder
from .lowshot import LowShot, LowShotResult, over_draws
from .accuracy import class_index, topk_hits
from .subsets import dataset_labels, stratified_split

CACHE_DTYPE = torch.float16  # cached tokens: LayerNorm outputs, well within float16's range and precision


@dataclass(frozen=True)
class AttentiveConfig:
    """Settings of the attentive probe (defaults in brackets in ``openjepa eval attentive --help``)."""

    num_queries: int = 1  # learnable query tokens; their outputs are averaged
    num_heads: int | None = None  # None: the encoder's head count
    mlp_ratio: float = 4.0
    epochs: int = 20
    min_steps: int = 500  # small training sets: at least this many steps per fit (whole epochs are added)
    batch_size: int = 128
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # peak learning rates tried
    weight_decays: tuple[float, ...] = (0.01, 0.1)  # AdamW weight decays tried
    warmup_fraction: float = 0.1  # share of the steps spent warming the learning rate up from 0
    holdout: float = 0.1  # fraction of the TRAINING tokens held out to choose lr and weight decay
    seed: int = 0  # held-out split, initialisation and batch order
    cache_gb: float = 4.0  # keep the frozen tokens in memory when they take at most this much

    def __post_init__(self):
        if min(self.num_queries, self.epochs, self.batch_size) < 1 or self.min_steps < 0:
            raise UserError("the attentive probe needs num_queries, epochs and batch_size >= 1, min_steps >= 0")
        if not self.lrs or min(self.lrs) <= 0:
            raise UserError(f"attentive probe learning rates must be > 0, got {list(self.lrs)}")
        if not self.weight_decays or min(self.weight_decays) < 0:
            raise UserError(f"attentive probe weight decays must be >= 0, got {list(self.weight_decays)}")
        if not 0 < self.holdout < 1:
            raise UserError(f"the held-out fraction must be between 0 and 1 (e.g. 0.1), got {self.holdout}")
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


class AttentivePooler(nn.Module):
    """``num_queries`` learnt queries attending over ``[B, N, dim]`` tokens, then an MLP, a LayerNorm and a linear
    classifier. Parameter shapes are those of an ordinary cross-attention block (``q``, ``k``, ``v``, ``proj``
    linear layers of width ``dim``)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 1, num_queries: int = 1,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise UserError(f"the attentive probe's width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        # Unit-scale queries and unit-gain (Xavier) attention and MLP weights, a small head. With std-0.02 weights
        # everywhere (the usual transformer init) the attention logits start ~1e-4 and the image-dependent part of
        # the output ~1e-3 of the constant query: the probe then needs several times more steps to leave chance
        # level, which small (low-shot) training sets do not have. Measured on a task that only attention solves:
        # 0.48 -> 0.83 top-1 after 100 steps at lr 3e-3 (tests/test_eval_attentive.py).
        nn.init.trunc_normal_(self.queries, std=1.0, a=-2.0, b=2.0)
        for layer in (self.q, self.k, self.v, self.proj, self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(self.head.bias)

    def attend(self, kv: torch.Tensor) -> torch.Tensor:
        """Multi-head attention of the queries over the normed tokens ``kv`` ``[B, N, D]`` -> ``[B, Q, D]``,
        before the output projection.

        The same numbers as projecting every token to keys and values, but cheaper for few queries. For head
        ``h``, ``q_h . (W_k,h x + b_k,h) = (W_k,h^T q_h) . x + q_h . b_k,h``: the second term is the same for every
        token and cancels in the softmax, so the logits are ``x . u_h`` with ``u_h = W_k,h^T q_h``. And since the
        attention weights ``a`` sum to 1, ``sum_n a_n (W_v,h x_n + b_v,h) = W_v,h (sum_n a_n x_n) + b_v,h``: the
        tokens are pooled first and projected once. Cost ``O(N D H Q)`` instead of ``O(N D^2)``.
        """
        batch, _, dim = kv.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(self.queries).reshape(-1, heads, head_dim)  # [Q, H, d]
        w_k = self.k.weight.reshape(heads, head_dim, dim)  # rows of head h: [H, d, D]
        u = torch.einsum("qhd,hdD->qhD", q, w_k) / math.sqrt(head_dim)  # [Q, H, D]
        logits = torch.einsum("bnD,qhD->bqhn", kv, u)
        weights = logits.softmax(dim=-1)
        pooled = torch.einsum("bqhn,bnD->bqhD", weights, kv)  # [B, Q, H, D]
        w_v = self.v.weight.reshape(heads, head_dim, dim)
        out = torch.einsum("bqhD,hdD->bqhd", pooled, w_v) + self.v.bias.reshape(heads, head_dim)
        return out.reshape(batch, -1, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, D]`` patch tokens -> ``[B, num_classes]`` logits."""
        x = self.queries + self.proj(self.attend(self.norm_kv(tokens)))
        x = x + self.mlp(self.norm_mlp(x))
        return self.head(self.norm_out(x.mean(dim=1)))


# -- frozen tokens -----------------------------------------------------------------------------------------------------
class Tokens:
    """The frozen encoder's patch tokens ``[N, T, D]`` of a labelled dataset: held in memory (float16), or recomputed
    by the encoder for every mini-batch when they would not fit."""

    def __init__(self, labels: torch.Tensor, cached: torch.Tensor | None = None, encoder: nn.Module | None = None,
                 dataset: Dataset | None = None, device: torch.device | None = None, num_workers: int = 0):
        self.labels = labels
        self.cached = cached
        self.encoder, self.dataset, self.device, self.num_workers = encoder, dataset, device, num_workers

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.cached is not None

    def batches(self, indices: torch.Tensor, batch_size: int, device: torch.device):
        """``(tokens float32 [b, T, D], rows of indices)`` over ``indices`` in the given order."""
        if self.cached is not None:
            for chunk in indices.split(batch_size):
                yield self.cached[chunk].to(device, torch.float32), chunk
            return
        loader = DataLoader(Subset(self.dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(0))
        for chunk, batch in zip(indices.split(batch_size), loader):
            images, _ = _split_batch(batch)
            with torch.no_grad():
                tokens = self.encoder(images.to(self.device))
            yield tokens.to(device, torch.float32), chunk


def extract_tokens(encoder: nn.Module, dataset: Dataset, batch_size: int = 256,
                   device: str | torch.device | None = None, cache_gb: float = 4.0, progress: bool = True,
                   num_workers: int = 0, desc: str = "tokens") -> Tokens:
    """The frozen patch tokens of every sample of ``dataset`` (``(image, label)`` samples), kept in memory when
    ``N * patches * width`` float16 values fit in ``cache_gb`` GiB, else recomputed on demand."""
    vit = unwrap_encoder(encoder).eval()
    device = torch.device(device) if device is not None else next(vit.parameters()).device
    vit.to(device)
    first = dataset[0]
    image = first[0] if isinstance(first, (tuple, list)) else first
    patches = vit.patch_embed.grid_for(image.shape[-2], image.shape[-1])
    size = len(dataset) * patches[0] * patches[1] * vit.embed_dim * CACHE_DTYPE.itemsize
    loader = make_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda")
    if size > cache_gb * 2**30:
        labels = dataset_labels(dataset)
        if labels is None:  # a dataset that does not expose its labels: read them, images and all, once
            labels = torch.cat([_batch_labels(batch) for batch in tqdm(
                loader, desc=f"{desc}: labels", disable=not progress, leave=False, unit="batch")])
        return Tokens(labels, encoder=vit, dataset=dataset, device=device, num_workers=num_workers)
    xs, ys = [], []
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            images, _ = _split_batch(batch)
            xs.append(vit(images.to(device, non_blocking=True)).to("cpu", CACHE_DTYPE))
            ys.append(_batch_labels(batch))
    if not xs:
        raise UserError("cannot extract tokens from an empty dataset")
    return Tokens(torch.cat(ys), cached=torch.cat(xs))


def _batch_labels(batch) -> torch.Tensor:
    images, labels = _split_batch(batch)
    return labels.long().cpu() if labels is not None else torch.full((len(images),), -1, dtype=torch.long)


# -- fitting -----------------------------------------------------------------------------------------------------------
@dataclass
class AttentiveResult:
    top1: float
    top5: float | None  # only with more than 5 classes
    lr: float
    weight_decay: float
    holdout_fraction: float
    sweep: dict[str, float]  # "lr=..., wd=..." -> held-out top-1
    n_train: int
    n_test: int
    num_classes: int
    epochs: int
    num_queries: int
    probe: AttentivePooler | None = field(default=None, repr=False)
    classes: torch.Tensor | None = field(default=None, repr=False)

    def line(self, context: str = "") -> str:
        top5 = f" top-5 {self.top5:.3f}" if self.top5 is not None else ""
        extra = f", {context}" if context else ""
        return (f"attentive probe top-1 {self.top1:.3f}{top5} (lr={self.lr:.0e}, wd={self.weight_decay:g} chosen on "
                f"{self.holdout_fraction:.0%} of train; {self.n_train} train / {self.n_test} test{extra})")

    def to_dict(self) -> dict[str, Any]:
        return {"method": "attentive", "top1": self.top1, "top5": self.top5, "lr": self.lr,
                "weight_decay": self.weight_decay, "holdout_fraction": self.holdout_fraction, "sweep": self.sweep,
                "n_train": self.n_train, "n_test": self.n_test, "num_classes": self.num_classes,
                "epochs": self.epochs, "num_queries": self.num_queries}


def _new_probe(dim: int, num_classes: int, heads: int, cfg: AttentiveConfig, seed: int,
               device: torch.device) -> AttentivePooler:
    with torch.random.fork_rng(devices=[]):  # the caller's global generator is left as it was
        torch.manual_seed(seed)
        return AttentivePooler(dim, num_classes, heads, cfg.num_queries, cfg.mlp_ratio).to(device)


def _optimizer(probe: AttentivePooler, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in probe.named_parameters() if p.ndim >= 2 and n != "queries"]
    rest = [p for n, p in probe.named_parameters() if not (p.ndim >= 2 and n != "queries")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=0.0)


def fit_probe(tokens: Tokens, targets: torch.Tensor, rows: torch.Tensor, num_classes: int, lr: float,
              weight_decay: float, cfg: AttentiveConfig, device: torch.device, heads: int, bar=None) -> AttentivePooler:
    """Train a fresh probe on ``rows`` of ``tokens`` (class indices ``targets`` for every row of ``tokens``)."""
    dim = _token_dim(tokens, device)
    probe = _new_probe(dim, num_classes, heads, cfg, cfg.seed, device).train()
    optimizer = _optimizer(probe, weight_decay)
    epochs = epochs_for(len(rows), cfg)
    total = epochs * math.ceil(len(rows) / cfg.batch_size)
    warmup = int(cfg.warmup_fraction * total)
    order = torch.Generator().manual_seed(cfg.seed + 1)
    step = 0
    with torch.enable_grad():
        for _ in range(epochs):
            shuffled = rows[torch.randperm(len(rows), generator=order)]
            for x, chunk in tokens.batches(shuffled, cfg.batch_size, device):
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, warmup, total, 0.0, lr, 0.0)
                loss = F.cross_entropy(probe(x), targets[chunk].to(device))
                if not math.isfinite(loss.item()):
                    raise UserError(f"the attentive probe diverged (loss {loss.item()}) at lr={lr:g}; use lower "
                                    f"learning rates (--lrs)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if bar is not None:
                    bar.update(1)
    return probe.eval()


def epochs_for(n: int, cfg: AttentiveConfig) -> int:
    """Epochs of a fit on ``n`` images: ``cfg.epochs``, or more for small sets, to reach ``cfg.min_steps``."""
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))


def _token_dim(tokens: Tokens, device: torch.device) -> int:
    if tokens.cached is not None:
        return tokens.cached.shape[-1]
    return unwrap_encoder(tokens.encoder).embed_dim


@torch.no_grad()
def probe_logits(probe: AttentivePooler, tokens: Tokens, rows: torch.Tensor, batch_size: int,
                 device: torch.device) -> torch.Tensor:
    """Logits ``[len(rows), C]`` of ``rows`` of ``tokens``."""
    return torch.cat([probe(x) for x, _ in tokens.batches(rows, batch_size, device)])


def attentive_probe(train: Tokens, test: Tokens, cfg: AttentiveConfig = AttentiveConfig(), num_heads: int = 1,
                    device: str | torch.device | None = None, train_rows: torch.Tensor | None = None,
                    progress: bool = False) -> AttentiveResult:
    """Choose lr and weight decay on held-out training tokens, retrain on all training tokens (``train_rows`` of
    ``train``: all by default, or a low-shot draw), report top-1 (and top-5 with more than 5 classes) on
    ``test``. ``num_heads``: attention heads when ``cfg.num_heads`` is None (the encoder's)."""
    device = torch.device(device or "cpu")
    rows = torch.arange(len(train)) if train_rows is None else torch.as_tensor(train_rows).long()
    if bool((train.labels[rows] < 0).any()) or bool((test.labels < 0).any()):
        raise UserError("the attentive probe needs labelled train and test images (labels >= 0)")
    classes, y_rows, y_test = class_index(train.labels[rows], test.labels)
    if len(classes) < 2:
        raise UserError("the training images hold a single class; a classifier needs at least two")
    targets = torch.full((len(train),), -1, dtype=torch.long)
    targets[rows] = y_rows
    heads = cfg.num_heads or num_heads
    fit_pos, held_pos = stratified_split(y_rows, cfg.holdout, cfg.seed)
    fit_rows, held_rows = rows[fit_pos], rows[held_pos]
    candidates = len(cfg.lrs) * len(cfg.weight_decays)
    steps = (candidates * epochs_for(len(fit_rows), cfg) * math.ceil(len(fit_rows) / cfg.batch_size)
             + epochs_for(len(rows), cfg) * math.ceil(len(rows) / cfg.batch_size))
    sweep: dict[str, float] = {}
    best = (-1.0, math.inf, None)
    with tqdm(total=steps, desc="attentive probe", disable=not progress, leave=False, unit="step") as bar:
        for lr in cfg.lrs:
            for wd in cfg.weight_decays:
                bar.set_postfix_str(f"lr {lr:g} wd {wd:g}", refresh=False)
                probe = fit_probe(train, targets, fit_rows, len(classes), lr, wd, cfg, device, heads, bar)
                logits = probe_logits(probe, train, held_rows, cfg.batch_size, device)
                held_y = targets[held_rows].to(device)
                acc = (logits.argmax(1) == held_y).float().mean().item()
                loss = F.cross_entropy(logits, held_y).item()
                sweep[f"lr={lr:g}, wd={wd:g}"] = acc
                if acc > best[0] or (acc == best[0] and loss < best[1]):
                    best = (acc, loss, (lr, wd))
        lr, wd = best[2]
        bar.set_postfix_str(f"final fit: lr {lr:g} wd {wd:g}", refresh=False)
        probe = fit_probe(train, targets, rows, len(classes), lr, wd, cfg, device, heads, bar)
    logits = probe_logits(probe, test, torch.arange(len(test)), cfg.batch_size, device)
    y_test = y_test.to(device)
    top1 = topk_hits(logits, y_test, 1).float().mean().item()
    top5 = topk_hits(logits, y_test, 5).float().mean().item() if len(classes) > 5 else None
    return AttentiveResult(top1, top5, lr, wd, cfg.holdout, sweep, len(rows), len(test), len(classes),
                           epochs_for(len(rows), cfg), cfg.num_queries, probe, classes)


def with_overrides(cfg: AttentiveConfig, **changes: Any) -> AttentiveConfig:
    """``cfg`` with the given fields replaced (``None`` values are ignored)."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})


def evaluate_attentive(encoder: nn.Module, train_ds: Dataset, test_ds: Dataset,
                       cfg: AttentiveConfig = AttentiveConfig(), low_shot: LowShot | None = None,
                       batch_size: int = 256, device: str | torch.device | None = None, progress: bool = True,
                       num_workers: int = 0) -> AttentiveResult | LowShotResult:
    """The attentive probe of a frozen ``encoder`` trained on ``train_ds`` and scored on ``test_ds`` (datasets of
    ``(image, label)``), or with ``low_shot`` its mean and std over the draws of labelled subsets of ``train_ds``
    (the encoder then only sees the images of the draws)."""
    vit = unwrap_encoder(encoder)
    device = torch.device(device) if device is not None else next(vit.parameters()).device
    heads = cfg.num_heads or vit.num_heads
    test = extract_tokens(vit, test_ds, batch_size, device, cfg.cache_gb, progress, num_workers, "test tokens")
    if low_shot is None:
        train = extract_tokens(vit, train_ds, batch_size, device, cfg.cache_gb, progress, num_workers,
                               "train tokens")
        return attentive_probe(train, test, cfg, heads, device, progress=progress)
    labels = dataset_labels(train_ds)
    if labels is None:
        raise UserError("low-shot evaluation needs a training set whose labels are known up front (openjepa's "
                        "datasets, a TensorDataset, or a dataset with a `targets` attribute)")
    draws = [low_shot.indices(labels, k) for k in range(low_shot.draws)]
    union = torch.unique(torch.cat(draws))  # sorted: the only training images the encoder has to see
    train = extract_tokens(vit, Subset(train_ds, union.tolist()), batch_size, device, cfg.cache_gb, progress,
                           num_workers, "train tokens")

    def evaluate(indices: torch.Tensor, seed: int) -> AttentiveResult:
        return attentive_probe(train, test, cfg, heads, device, torch.searchsorted(union, indices), progress)

    return over_draws(labels, low_shot, evaluate, "attentive", progress)
