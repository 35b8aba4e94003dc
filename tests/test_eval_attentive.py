"""Attentive probe: the pooler is ordinary cross-attention, it learns what needs attention, fails on noise, chooses
its settings without the test split, works with and without the token cache, and runs from the command line."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from openjepa import build_ijepa
from openjepa.cli.main import main
from openjepa.eval import Features, linear_probe
from openjepa.eval.attentive import (
    AttentiveConfig,
    AttentivePooler,
    Tokens,
    attentive_probe,
    evaluate_attentive,
    extract_tokens,
)
from openjepa.models import vit_encoder

@pytest.fixture(autouse=True)
def _one_thread():
    """These probes are small: per-operation overheads dominate, and a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


QUICK = AttentiveConfig(epochs=1, min_steps=150, batch_size=64, lrs=(3e-3,), weight_decays=(0.01,))


def needle_tokens(n, seed, tokens=8, dim=16, classes=4, shuffle_labels=False):
    """Noise tokens; one token per image, at a random position, is marked (dimension 0 raised) and carries the
    image's class (3 class-specific dimensions raised). Averaging over the tokens dilutes the class 8 times;
    attending to the marked token recovers it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, tokens, dim, generator=g)
    where = torch.randint(0, tokens, (n,), generator=g)
    x[torch.arange(n), where, 0] += 4.0
    for c in range(classes):
        rows = (y == c).nonzero().squeeze(1)
        x[rows, where[rows], 1 + 3 * c:4 + 3 * c] += 1.5
    if shuffle_labels:
        y = y[torch.randperm(n, generator=g)]
    return Tokens(y, cached=x.half())


def test_pooler_equals_plain_multi_head_cross_attention():
    torch.manual_seed(0)
    pooler = AttentivePooler(48, 5, num_heads=3, num_queries=2)
    with torch.no_grad():
        for p in pooler.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kv = pooler.norm_kv(torch.randn(4, 10, 48))
    q = pooler.q(pooler.queries).expand(4, -1, -1)

    def heads(t):
        return t.unflatten(-1, (3, 16)).transpose(1, 2)

    plain = F.scaled_dot_product_attention(heads(q), heads(pooler.k(kv)), heads(pooler.v(kv)))
    plain = plain.transpose(1, 2).reshape(4, 2, 48)
    assert torch.allclose(pooler.attend(kv), plain, atol=1e-5)
    assert pooler(torch.randn(4, 10, 48)).shape == (4, 5)


def test_attention_finds_what_averaging_dilutes():
    train, test = needle_tokens(320, 0), needle_tokens(200, 1)
    result = attentive_probe(train, test, QUICK, num_heads=2)
    mean_pool = linear_probe(Features(train.cached.float().mean(1), train.labels),
                             Features(test.cached.float().mean(1), test.labels), (1e-3,))
    assert result.top1 > 0.75 and result.top1 > mean_pool.top1 + 0.15  # measured 0.83 vs 0.49
    assert result.n_train == 320 and result.n_test == 200 and result.epochs == 30  # 150 steps of 5 per epoch
    assert result.top5 is None and list(result.sweep) == ["lr=0.003, wd=0.01"]


def test_chance_on_shuffled_labels():
    result = attentive_probe(needle_tokens(320, 0, shuffle_labels=True), needle_tokens(200, 1, shuffle_labels=True),
                             AttentiveConfig(**{**QUICK.__dict__, "min_steps": 60}), num_heads=2)
    assert result.top1 < 0.4  # chance 0.25


def test_settings_are_chosen_without_the_test_split():
    cfg = AttentiveConfig(epochs=1, min_steps=20, batch_size=64, lrs=(1e-4, 3e-3), weight_decays=(0.0,))
    train, test = needle_tokens(240, 0), needle_tokens(100, 1)
    scrambled = Tokens(test.labels[torch.randperm(100, generator=torch.Generator().manual_seed(3))], test.cached)
    a = attentive_probe(train, test, cfg, num_heads=2)
    b = attentive_probe(train, scrambled, cfg, num_heads=2)
    assert a.sweep == b.sweep and (a.lr, a.weight_decay) == (b.lr, b.weight_decay)
    for x, y in zip(a.probe.state_dict().values(), b.probe.state_dict().values()):
        assert torch.equal(x, y)


def test_tokens_are_cached_or_recomputed_with_the_same_result():
    torch.manual_seed(0)
    encoder = vit_encoder("vit_tiny", patch_size=4, img_size=8, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    images, labels = torch.randn(60, 1, 8, 8), torch.arange(60) % 3
    data = TensorDataset(images, labels)
    cached = extract_tokens(encoder, data, batch_size=16, progress=False)
    streamed = extract_tokens(encoder, data, batch_size=16, cache_gb=0, progress=False)
    assert cached.in_memory and not streamed.in_memory and torch.equal(streamed.labels, labels)
    rows = torch.tensor([5, 0, 33])
    (a, ra), = list(cached.batches(rows, 8, torch.device("cpu")))
    (b, rb), = list(streamed.batches(rows, 8, torch.device("cpu")))
    assert torch.equal(ra, rows) and torch.equal(rb, rows)
    assert torch.allclose(a, b, atol=2e-3) and a.shape == (3, 4, 16)  # float16 cache vs float32
    cfg = AttentiveConfig(epochs=2, min_steps=0, batch_size=16, lrs=(1e-3,), weight_decays=(0.0,))
    one = evaluate_attentive(encoder, data, data, cfg, progress=False)
    two = evaluate_attentive(encoder, data, data, AttentiveConfig(**{**cfg.__dict__, "cache_gb": 0}), progress=False)
    assert abs(one.top1 - two.top1) <= 2 / 60


def test_cli_attentive_low_shot(tmp_path, capsys):
    model = build_ijepa(arch="vit_tiny", patch_size=4, img_size=16, in_chans=1, embed_dim=32, depth=1, num_heads=2,
                        pred_depth=1, pred_emb_dim=16)
    ckpt = tmp_path / "run.pth.tar"
    torch.save({"encoder": model.encoder.state_dict(), "predictor": model.predictor.state_dict(),
                "target_encoder": model.target_encoder.state_dict(),
                "config": {"model": {"arch": "vit_tiny", "patch_size": 4, "img_size": 16, "in_chans": 1,
                                     "embed_dim": 32, "depth": 1, "num_heads": 2, "pred_depth": 1,
                                     "pred_emb_dim": 16}, "data": {"dataset": "digits"}}}, ckpt)
    code = main(["eval", "attentive", "--checkpoint", str(ckpt), "--labels-per-class", "3", "--draws", "2",
                 "--epochs", "1", "--min-steps", "5", "--lrs", "1e-3", "--weight-decays", "0.01"])
    out = capsys.readouterr().out
    assert code == 0 and "attentive probe top-1" in out and "(2 draws of 3 labels per class, 30 train / 450 test" in out
    record = json.loads((tmp_path / "run.attentive-target.3pc.json").read_text())
    assert [d["seed"] for d in record["draws"]] == [0, 1] and record["settings"]["min_steps"] == 5
    assert all(len(d["indices"]) == 30 for d in record["draws"])
    assert main(["eval", "attentive", "--checkpoint", str(ckpt), "--pool", "mean"]) == 1
    assert "--pool does not apply" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"lrs": ()}, {"holdout": 1.0}, {"epochs": 0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(Exception, match="attentive probe|held-out"):
        AttentiveConfig(**bad)
