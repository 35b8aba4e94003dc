"""Run by tests/test_fsdp2.py under torchrun (2 gloo processes): FSDP2 on I-JEPA, checked against one process.

How the model is sharded, and why:

* every encoder and target-encoder block gets its own ``fully_shard``, then the encoder, the target encoder and
  the predictor each get one, and the :class:`IJEPA` module is the single FSDP root. With the three networks as
  separate roots, the target encoder (forward only, under ``no_grad``) keeps its root parameters unsharded after
  its forward, and the EMA update (``_foreach_lerp_``) then mixes plain tensors with DTensors and fails;
* the predictor's blocks are not sharded one by one: its forward calls the first block's layers and the last
  block's ``forward_last`` directly (to skip work whose output is discarded), which FSDP's pre-forward hooks never
  see ("got mixed torch.Tensor and DTensor" in ``layer_norm``). Sharded as one unit it is gathered whole for its
  forward; it is small next to the encoders (ViT-H/14: 22M of 1.3B parameters). Blocks 1.. could be sharded with
  ``register_fsdp_forward_method(block, "forward_last")`` for the last one.

Teacher and student parameters get identical placements, so the EMA is a local operation on each shard.
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from openjepa.ijepa import build_ijepa
from openjepa.masks import MultiBlockMaskSampler
from openjepa.step import make_optimizer, train_step

STEPS = 3


def build():
    torch.manual_seed(0)
    return build_ijepa(arch="vit_tiny", patch_size=4, img_size=16, depth=2, pred_depth=2, pred_emb_dim=48)


def data():
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    masks = MultiBlockMaskSampler((4, 4), min_keep=2).sample(8, torch.Generator().manual_seed(2))
    return images, masks.context, masks.targets


def train(model, rows):
    optimizer = make_optimizer(model)
    images, context, targets = data()
    losses = []
    for _ in range(STEPS):
        out = train_step(model, optimizer, images[rows], context[rows], targets[:, rows], 1e-3, 0.04, 0.9,
                         grad_clip=1.0, reduce_loss=mean_over_ranks)
        losses.append(float(out.loss))
    return losses


def mean_over_ranks(loss):
    if dist.is_initialized():
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    return loss


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = build()
    for net in (model.encoder, model.target_encoder):
        for block in net.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(net, mesh=mesh)
    fully_shard(model.predictor, mesh=mesh)
    fully_shard(model, mesh=mesh)
    per_rank = 8 // world
    losses = train(model, slice(rank * per_rank, (rank + 1) * per_rank))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    pairs = zip(model.target_encoder.parameters(), model.encoder.parameters())
    assert all(t.placements == s.placements and t.to_local().shape == s.to_local().shape for t, s in pairs)
    if rank == 0:
        dist.destroy_process_group()  # the reference runs in this process alone
        reference = build()
        expected = train(reference, slice(0, 8))
        assert all(abs(a - b) < 1e-5 for a, b in zip(losses, expected)), (losses, expected)
        for key, value in reference.state_dict().items():
            assert torch.allclose(full[key], value, atol=1e-5), key
        print(f"FSDP2 OK: losses {losses} equal the 1-process run", flush=True)
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
