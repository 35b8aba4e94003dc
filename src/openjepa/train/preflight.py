"""Checks made before anything is built or written: settings that would only fail once training runs, and a
model that cannot be built (a run folder that holds another run: :func:`openjepa.run_folder.refuse_to_mix_runs`)."""

from __future__ import annotations

from ..config import RunConfig, accumulation_steps
from ..errors import UserError
from ..ijepa import IJEPA, build_ijepa
from ..masks import build_mask_sampler
from ..models.pos_embed import to_2tuple
from ..seeding import seeded_generator

PREFLIGHT_MASK_BATCHES = 4  # masks drawn for the first batches before training, to catch impossible settings


def check_settings(config: RunConfig, world_size: int) -> None:
    """The patch grid, the model's shapes, the batch sizes, and whether the masks can be drawn at all (the first
    batches' own masks: a failure now is a failure later)."""
    if config.train.fit_to_deadline and config.train.max_minutes is None:
        raise UserError("train.fit_to_deadline=true fits the run to train.max_minutes, which is not set: give a "
                        "time budget, e.g. train.max_minutes=20")
    m = config.model
    height, width = to_2tuple(m.img_size)
    # model.patch_size >= 1 and the other ranges are checked when the settings are read (config_ranges.py)
    if height % m.patch_size or width % m.patch_size or height < m.patch_size or width < m.patch_size:
        below = max(m.patch_size, height // m.patch_size * m.patch_size)
        above = (height // m.patch_size + 1) * m.patch_size
        near = f"{below} or {above}" if below != above and below < height else f"{above}"
        raise UserError(
            f"model.img_size={m.img_size} is not a multiple of model.patch_size={m.patch_size}, so the images "
            f"cannot be cut into whole patches; use e.g. model.img_size={near}, or a patch size that divides "
            f"{m.img_size}"
        )
    grid = (height // m.patch_size, width // m.patch_size)
    sampler = build_mask_sampler(grid, config.mask)  # raises MaskSamplingError for impossible settings
    global_batch = config.data.batch_size * world_size * accumulation_steps(config, world_size)
    for step in range(PREFLIGHT_MASK_BATCHES):
        sampler.sample(global_batch, seeded_generator(config.train.seed, 0, step))


def build_model(config: RunConfig) -> IJEPA:
    """The run's model, or a :class:`UserError` naming the settings when they describe no buildable network."""
    try:
        return build_ijepa(config.model)
    except (ValueError, TypeError) as exc:  # e.g. a width that the number of heads does not divide
        raise UserError(
            f"the model settings do not describe a buildable network: {exc}. Check model.embed_dim, "
            f"model.num_heads, model.pred_emb_dim and model.pred_num_heads (each width must be divisible by its "
            f"number of heads)"
        ) from exc
