"""Selective recomputation (openjepa.models.recompute): LayerNorm and GELU outputs are not kept for backward, and
the gradients are bitwise those of the default step."""

import gc
import weakref

import torch

from openjepa.models import recompute
from openjepa.models.recompute import dropping_recomputable, recomputable
from openjepa.step import make_optimizer, train_step
from test_step_parity import LR, MOMENTUM, WD, batches, make_pair


def test_a_marked_output_is_dropped_and_recomputed():
    x = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(5, 5, requires_grad=True)
    outputs = {}
    for enabled in (False, True):
        with dropping_recomputable(enabled):
            h = recomputable(torch.sin(x), torch.sin, x)  # sin's backward keeps its input, not h
            loss = (h[:, 1:] @ w[1:]).sum()  # autograd saves a view of h
        alive = weakref.ref(h)
        del h
        gc.collect()
        assert (alive() is None) == enabled  # dropped only inside an enabled context
        outputs[enabled] = torch.autograd.grad(loss, (x, w))
    for a, b in zip(outputs[False], outputs[True]):
        assert torch.equal(a, b)


def test_marks_outside_the_context_are_ignored():
    x = torch.randn(3, requires_grad=True)
    y = recomputable(x.sin(), torch.sin, x)
    with dropping_recomputable():
        z = (y * y).sum()
    alive = weakref.ref(y)
    del y
    assert alive() is not None  # marked before the context: kept
    z.backward()


def test_selective_recompute_gives_the_same_step(monkeypatch):
    dropped = []
    real_init = recompute._Dropped.__init__
    monkeypatch.setattr(recompute._Dropped, "__init__",
                        lambda self, source, view: dropped.append(view.numel()) or real_init(self, source, view))
    default, selective = make_pair()
    selective.set_selective_recompute(True)
    opts = make_optimizer(default), make_optimizer(selective)
    for images, ctx, tgt in batches(default, 1):
        a = train_step(default, opts[0], images, ctx, tgt, LR, WD, MOMENTUM)
        b = train_step(selective, opts[1], images, ctx, tgt, LR, WD, MOMENTUM)
        assert torch.equal(a.loss, b.loss)
    for (name, p), q in zip(default.state_dict().items(), selective.state_dict().values()):
        assert torch.equal(p, q), name
    # 2 encoder blocks (2 LayerNorms + GELU each) + final norm, 2 predictor blocks (the first block's norm1 twice,
    # the last block's norm1 output read twice) + predictor norm
    assert len(dropped) >= 3 * 2 + 1 + 2 * 3 + 1


def test_selective_recompute_with_grad_checkpointing():
    default, selective = make_pair(pred_depth=2)
    selective.set_selective_recompute(True)
    for model in (default, selective):
        model.encoder.set_grad_checkpointing(True)
    images, ctx, tgt = next(batches(default, 1))
    default(images, ctx, tgt).backward()
    selective(images, ctx, tgt).backward()
    for p, q in zip(default.parameters(), selective.parameters()):
        if p.requires_grad:
            assert torch.equal(p.grad, q.grad)
