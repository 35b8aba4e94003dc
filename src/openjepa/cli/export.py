"""``openjepa export``: one encoder of a checkpoint as an openjepa, Hugging Face or timm model folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from . import export_classifier

EXAMPLES = """examples:
  openjepa export --checkpoint runs/digits/jepa-latest.pth.tar --format hf --out exported/digits-hf
  openjepa export --checkpoint IN1K-vit.h.14-300e.pth.tar --format timm --out exported/vith14-timm
  openjepa export --checkpoint runs/digits/jepa-latest.pth.tar --which context --out exported/context

The checkpoint is an openjepa training checkpoint or a released I-JEPA .pth.tar. The target (EMA) encoder is
exported unless --which context. Folders: openjepa -> model.safetensors + config.json (load_exported);
hf -> transformers.IJepaModel.from_pretrained(DIR); timm -> see DIR/README.md. A fine-tuning run folder or
checkpoint (openjepa finetune) exports its classifier: hf -> IJepaForImageClassification, timm -> ViT with head.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export an encoder for openjepa, Hugging Face transformers or timm",
        description="Export one encoder of a checkpoint as a model folder.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (openjepa's or a released one), or a fine-tuning run folder / checkpoint")
    p.add_argument("--format", choices=("openjepa", "hf", "timm"), default="openjepa", help="default: openjepa")
    p.add_argument("--which", choices=("target", "context"), default="target",
                   help="the EMA target encoder (default, what the paper evaluates) or the context encoder")
    p.add_argument("--out", required=True, help="output folder (created if needed; its files are replaced)")
    p.add_argument("--img-size", type=int, default=None,
                   help="export for this image size (position embeddings resampled); default: the training size")
    p.add_argument("--mean", type=float, nargs="+", default=None,
                   help="input normalisation mean per channel, when the checkpoint does not record it")
    p.add_argument("--std", type=float, nargs="+", default=None, help="input normalisation std per channel")
    p.add_argument("--hf-layout", choices=("auto", "v5", "v4"), default="auto",
                   help="transformers key layout (auto: the installed version's)")
    p.set_defaults(func=run)


def report_warnings(command: str, work: Callable[[], object]) -> object:
    """Run ``work``, printing its warnings as one ``openjepa COMMAND: warning: ...`` line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = work()
    for warning in caught:
        print(f"openjepa {command}: warning: {warning.message}", file=sys.stderr)
    return result


def run(args) -> int:
    if export_classifier.handles(args):  # a fine-tuned classifier: transformers / timm with its head
        return export_classifier.run(args)
    from ..checkpoint import CheckpointError
    from ..interop import export_hf, export_openjepa, export_timm
    from ..interop.official import encoder_from_state, read_checkpoint
    from ..interop.provenance import info_from_checkpoint

    path = Path(args.checkpoint)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it (e.g. jepa-latest.pth.tar)")

    def export():
        state, origin = read_checkpoint(path)
        encoder = encoder_from_state(state, origin, args.which, args.img_size)
        info = info_from_checkpoint(state, args.which, encoder.in_chans, args.mean, args.std)
        if args.format == "hf":
            out = export_hf(encoder, args.out, args.which, info, layout=args.hf_layout)
        elif args.format == "timm":
            out = export_timm(encoder, args.out, args.which, info)
        else:
            out = export_openjepa(encoder, args.out, args.which, info)
        return encoder, info, out

    encoder, info, out = report_warnings("export", export)
    arch = encoder.arch()
    print(f"exported the {args.which} encoder (width {arch['embed_dim']}, depth {arch['depth']}, patch "
          f"{arch['patch_size']}, {arch['img_size'][0]}x{arch['img_size'][1]} images) to {out} in {args.format} "
          f"format; licence {info.license}")
    return 0
