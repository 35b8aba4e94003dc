
import pytest
import torch
import torch.nn.functional as F

from openjepa import MultiBlockMaskSampler, Schedules, build_ijepa
from openjepa.ijepa import ModelConfig, patchify
from openjepa.models import VisionTransformerPredictor


def tiny_model(**kw):
    cfg = dict(arch="vit_tiny", patch_size=4, img_size=16, depth=2, pred_depth=2, pred_emb_dim=48)
    cfg.update(kw)
    return build_ijepa(**cfg)


def batch(model, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    sampler = MultiBlockMaskSampler(model.encoder.grid_size, min_keep=2)
    masks = sampler.sample(b, g)
    return torch.randn(b, 3, 16, 16, generator=g), masks.context, masks.targets


def test_shapes_and_official_predictor_names():
    model = tiny_model()
    images, ctx, tgt = batch(model)
    preds = model.predict(images, ctx, tgt)
    targets, pooled = model.compute_targets(images, tgt)
    assert preds.shape == targets.shape == (4 * 4, tgt.shape[-1], 192)
    assert pooled.shape == (4, 192)
    names = set(model.predictor.state_dict())
    for key in ["predictor_embed.weight", "mask_token", "predictor_pos_embed", "predictor_blocks.1.attn.qkv.weight",
                "predictor_norm.weight", "predictor_proj.bias"]:
        assert key in names
    assert set(model.state_dict()) >= {"encoder.pos_embed", "target_encoder.pos_embed", "predictor.mask_token"}


def test_targets_are_layer_normed_target_features_gathered_block_major():
    model = tiny_model()
    images, ctx, tgt = batch(model)
    targets, _ = model.compute_targets(images, tgt)
    with torch.no_grad():
        h = F.layer_norm(model.target_encoder(images), (192,))
    m, b = 2, 3
    assert torch.allclose(targets[m * 4 + b], h[b, tgt[m, b]])


def test_predictor_matches_a_per_block_loop():
    """Batched prediction of all blocks equals predicting each block alone (the released code's semantics)."""
    torch.manual_seed(0)
    pred = VisionTransformerPredictor(grid_size=4, embed_dim=32, predictor_embed_dim=16, depth=2, num_heads=2)
    ctx_idx = torch.tensor([[0, 1, 2, 5], [3, 7, 8, 9]])
    tgt_idx = torch.randint(0, 16, (3, 2, 2))
    z = torch.randn(2, 4, 32)
    together = pred(z, ctx_idx, tgt_idx)
    for m in range(3):
        alone = pred(z, ctx_idx, tgt_idx[m])
        assert torch.allclose(together[m * 2:(m + 1) * 2], alone, atol=1e-6)


def test_target_encoder_gets_no_gradient_and_stays_in_eval():
    model = tiny_model(drop_path_rate=0.1)
    model.train()
    assert model.encoder.training and not model.target_encoder.training
    loss = model(*batch(model))
    loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.predictor.mask_token.grad is not None


def test_ema_math():
    model = tiny_model()
    with torch.no_grad():  # a student that differs from the teacher, so that any update shows
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target(0.9)
    for t0, t1, e in zip(before, model.target_encoder.parameters(), model.encoder.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * e, atol=1e-6)
    # momentum 1 (the end of the schedule) freezes the teacher: its values before the update are its values after
    frozen = [p.clone() for p in model.target_encoder.parameters()]
    assert any(not torch.equal(t, e) for t, e in zip(frozen, model.encoder.parameters()))
    model.update_target(1.0)
    for t_before, t_after in zip(frozen, model.target_encoder.parameters()):
        assert torch.equal(t_before, t_after)
    # momentum 0 copies the student
    model.update_target(0.0)
    for t, e in zip(model.target_encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(t, e)


def test_param_groups_exclude_biases_and_1d_from_decay():
    model = tiny_model()
    groups = model.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    decay = [names[id(p)] for g in groups[:2] for p in g["params"]]
    no_decay = [names[id(p)] for g in groups[2:] for p in g["params"]]
    assert all(g.get("WD_exclude") for g in groups[2:]) and all(g["weight_decay"] == 0 for g in groups[2:])
    assert all(not n.endswith("bias") and "norm" not in n for n in decay)
    assert all(n.endswith("bias") or "norm" in n for n in no_decay)
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "predictor.mask_token" in decay
    assert not any(n.startswith("target_encoder") for n in decay + no_decay)
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.encoder.parameters())) + len(list(model.predictor.parameters()))


def test_criterion_against_hand_computed_values():
    """smooth-L1 (beta 1: 0.5 d^2 below |d| = 1, |d| - 0.5 above) and MSE, averaged over every element, on tensors
    whose loss is worked out by hand."""
    predictions = torch.tensor([[[0.0, 0.5, 3.0], [-2.0, 0.1, 1.0]]])
    targets = torch.tensor([[[0.0, 0.0, 0.0], [0.0, -0.1, 0.0]]])
    # per element d = 0, 0.5, 3, -2, 0.2, 1
    smooth = (0 + 0.125 + 2.5 + 1.5 + 0.02 + 0.5) / 6
    squared = (0 + 0.25 + 9 + 4 + 0.04 + 1) / 6
    assert tiny_model(loss="smooth_l1").criterion(predictions, targets).item() == pytest.approx(smooth, rel=1e-6)
    assert tiny_model(loss="mse").criterion(predictions, targets).item() == pytest.approx(squared, rel=1e-6)
    with pytest.raises(ValueError, match="model.loss"):
        ModelConfig(loss="l1")


@pytest.mark.parametrize("loss", ["smooth_l1", "mse"])
def test_loss_matches_the_plain_reference_forward(loss):
    """The model's loss against tests/reference_step.py, which recomputes the targets and predictions from the
    weights with its own plain forward (explicit attention, one predictor pass per block)."""
    from reference_step import reference_loss

    torch.manual_seed(0)
    model = tiny_model(loss=loss)
    with torch.no_grad():  # a teacher that differs from the student, so that targets and predictions differ
        for p in model.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, ctx, tgt = batch(model)
    with torch.no_grad():
        ours, reference = model(images, ctx, tgt), reference_loss(model, images, ctx, tgt)
    assert ours.item() > 0.05
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_pixel_targets_ablation():
    model = tiny_model(target="pixels")
    images, ctx, tgt = batch(model)
    targets, _ = model.compute_targets(images, tgt)
    assert targets.shape[-1] == 4 * 4 * 3
    patches = patchify(images, 4)
    assert torch.allclose(targets[0], F.layer_norm(patches[0, tgt[0, 0]], (48,)), atol=1e-6)
    model(images, ctx, tgt).backward()


def constant_prediction_loss(model, images, tgt) -> float:
    """The loss of the best constant guess of the model's targets (their mean over blocks and patches): about 0 when
    the representation has collapsed (every target the same vector), whatever the predictor does."""
    with torch.no_grad():
        targets, _ = model.compute_targets(images, tgt, pooled=False)
        return model.criterion(targets.mean(dim=(0, 1), keepdim=True).expand_as(targets), targets).item()


def test_loss_decreases_on_a_tiny_batch_without_collapse():
    torch.manual_seed(0)
    model = tiny_model()
    images, ctx, tgt = batch(model, b=8)
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-3)
    spread_before = constant_prediction_loss(model, images, tgt)
    losses = []
    for _ in range(40):
        loss = model(images, ctx, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target(0.996)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # ... and not because the targets stopped varying: a collapsed representation (every target alike) makes a
    # constant guess nearly perfect; here the targets keep most of their spread around their mean.
    assert constant_prediction_loss(model, images, tgt) > 0.5 * spread_before


def test_constant_prediction_loss_is_near_zero_for_a_collapsed_teacher():
    model = tiny_model()
    images, _, tgt = batch(model, b=8)
    assert constant_prediction_loss(model, images, tgt) > 0.02
    with torch.no_grad():  # collapse: every patch of every image gives the same feature vector
        model.target_encoder.norm.weight.zero_()
        model.target_encoder.norm.bias.copy_(torch.linspace(-1, 1, model.target_encoder.norm.bias.numel()))
    assert constant_prediction_loss(model, images, tgt) < 1e-6


def test_schedules_values():
    s = Schedules(total_steps=100, warmup_steps=10, start_lr=0.1, lr=1.0, final_lr=0.0,
                  weight_decay=0.04, final_weight_decay=0.4, ema_start=0.996, ema_end=1.0)
    assert s.lr_at(0) == pytest.approx(0.1) and s.lr_at(5) == pytest.approx(0.55)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(55) == pytest.approx(0.5)  # half-way through the cosine
    assert s.lr_at(100) == pytest.approx(0.0) and s.lr_at(150) == pytest.approx(0.0)
    assert s.wd_at(0) == pytest.approx(0.04) and s.wd_at(50) == pytest.approx(0.22) and s.wd_at(100) == 0.4
    assert s.momentum_at(0) == 0.996 and s.momentum_at(50) == pytest.approx(0.998) and s.momentum_at(100) == 1.0
    # A pure function of the step: a 'resumed' lookup equals the uninterrupted sequence.
    seq = [s.at(k) for k in range(100)]
    assert seq[37] == s.at(37)
    assert all(seq[k][0] >= seq[k + 1][0] for k in range(10, 99))


def test_parity_with_transformers_ijepa():
    import transformers  # a test dependency: a missing install must fail, not skip
    torch.manual_seed(0)
    from openjepa.interop import installed_layout, to_hf_state_dict
    from openjepa.models import vit_encoder

    enc = vit_encoder("vit_small", patch_size=16, img_size=64, depth=3).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (LayerNorms and biases included)
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = transformers.IJepaConfig(hidden_size=384, num_hidden_layers=3, num_attention_heads=6,
                                      intermediate_size=1536, image_size=64, patch_size=16, layer_norm_eps=1e-6)
    hf = transformers.IJepaModel(config).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(enc, installed_layout()), strict=False)
    assert not unexpected and not [k for k in missing if "pooler" not in k]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = enc(x)
        theirs = hf(pixel_values=x).last_hidden_state
    assert (ours - theirs).abs().max().item() < 1e-5
