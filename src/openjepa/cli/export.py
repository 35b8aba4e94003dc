"""``openjepa export``: one encoder of a checkpoint as an openjepa, Hugging Face or timm model folder; a fine-tuned
classifier as Hugging Face ``IJepaForImageClassification`` or timm's ViT with its head."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..interop.classifier import classifier_export_info, export_hf_classifier, export_timm_classifier
from ..interop.hf import export_hf
from ..interop.native import export_openjepa
from ..interop.provenance import info_from_checkpoint
from ..interop.timm import export_timm
from ..pretrained import is_classifier_file, read_classifier, read_encoder
from .encoder_args import CHECKPOINT_HELP
from .output import report_warnings

EXAMPLES = """examples:
  openjepa export --checkpoint runs/digits/jepa-latest.pth.tar --format hf --out exported/digits-hf
  openjepa export --checkpoint IN1K-vit.h.14-300e.pth.tar --format timm --out exported/vith14-timm
  openjepa export --checkpoint runs/digits --which context --out exported/context

The checkpoint is an openjepa training checkpoint, a run folder (its latest checkpoint) or a released I-JEPA
.pth.tar. The target (EMA) encoder is exported unless --which context. Folders: openjepa -> model.safetensors +
config.json (load_exported); hf -> transformers.IJepaModel.from_pretrained(DIR); timm -> see DIR/README.md.
A fine-tuning run folder or checkpoint (openjepa finetune) exports its classifier: hf ->
IJepaForImageClassification, timm -> ViT with its head, openjepa -> its encoder alone.
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
                   help=f"{CHECKPOINT_HELP}, or a fine-tuning run folder / checkpoint (its classifier)")
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


def run(args) -> int:
    if is_classifier_file(args.checkpoint):  # a fine-tuned classifier: transformers / timm with its head
        return export_classifier(args)

    def export():
        loaded = read_encoder(args.checkpoint, args.which, args.img_size)
        encoder = loaded.encoder
        info = info_from_checkpoint(loaded.metadata, args.which, encoder.in_chans, args.mean, args.std)
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


def export_classifier(args) -> int:
    """``openjepa export`` of a fine-tuned classifier."""
    if args.which != "target" or args.img_size is not None or args.mean is not None or args.std is not None:
        raise UserError("--which, --img-size, --mean and --std do not apply to a fine-tuned classifier: it has one "
                        "encoder, trained at its size, with the normalisation it records")
    model, info = read_classifier(args.checkpoint)
    if args.format == "hf":
        out = export_hf_classifier((model, info), args.out, layout=args.hf_layout)
        what = "IJepaForImageClassification"
    elif args.format == "timm":
        out = export_timm_classifier((model, info), args.out)
        what = "timm ViT with its head"
    else:
        out = export_openjepa(model.encoder, args.out, "target", classifier_export_info(info))
        what = "encoder (openjepa format; the head is not part of it)"
    print(f"exported the fine-tuned classifier ({model.num_classes} classes: {', '.join(info.classes[:5])}"
          f"{' ...' if len(info.classes) > 5 else ''}) as {what} to {out}; licence {info.license}")
    return 0
