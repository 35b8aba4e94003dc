"""``openjepa export`` of a fine-tuned classifier (a fine-tuning run folder or checkpoint): Hugging Face
``IJepaForImageClassification`` or timm's ViT with its head; ``--format openjepa`` writes the encoder alone."""

from __future__ import annotations

from ..errors import UserError
from ..finetune.checkpoint import is_finetune_file, read_classifier
from ..interop import ExportInfo, export_openjepa
from ..interop.classifier import export_hf_classifier, export_timm_classifier


def handles(args) -> bool:
    """Whether ``--checkpoint`` names a fine-tuned classifier."""
    return is_finetune_file(args.checkpoint)


def run(args) -> int:
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
        export_info = ExportInfo(mean=info.mean, std=info.std, license=info.license, source=info.source,
                                 dataset=info.dataset)
        out = export_openjepa(model.encoder, args.out, "target", export_info)
        what = "encoder (openjepa format; the head is not part of it)"
    print(f"exported the fine-tuned classifier ({model.num_classes} classes: {', '.join(info.classes[:5])}"
          f"{' ...' if len(info.classes) > 5 else ''}) as {what} to {out}; licence {info.license}")
    return 0
