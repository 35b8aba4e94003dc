"""``openjepa convert``: bring a released I-JEPA checkpoint or a Hugging Face IJepaModel folder into openjepa's
export format (``model.safetensors`` + ``config.json``, read by ``openjepa.interop.load_exported``)."""

from __future__ import annotations

import argparse

from ..interop.hf import load_hf, read_hf_info
from ..interop.native import export_openjepa
from ..interop.provenance import info_from_checkpoint
from ..pretrained import load_trained
from .output import report_warnings

EXAMPLES = """examples:
  openjepa convert official IN1K-vit.h.14-300e.pth.tar --out models/vith14-in1k
  openjepa convert official IN1K-vit.h.16-448px-300e.pth.tar --img-size 224 --out models/vith16-224
  openjepa convert hf path/to/ijepa_vith14_1k --out models/vith14-from-hf

'official' reads the architecture off the weights (heads from the preset of the same width; --num-heads to
override), loads the context encoder, predictor and target encoder strictly, and writes the target encoder
(or --which context). Released weights are CC-BY-NC-4.0; the export records it. To continue training from a
released file, pass it to `openjepa pretrain --resume` directly.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a released I-JEPA checkpoint or a Hugging Face model to openjepa's format",
        description="Convert weights from another source into an openjepa model folder.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="source_kind", metavar="SOURCE", required=True)
    official = kinds.add_parser("official", help="a released I-JEPA .pth.tar checkpoint",
                                description="Convert a released I-JEPA checkpoint.")
    official.add_argument("checkpoint", help="the .pth.tar file (or an openjepa run folder: its latest checkpoint)")
    official.add_argument("--which", choices=("target", "context"), default="target",
                          help="encoder to write (default: target, the EMA encoder the paper evaluates)")
    official.add_argument("--img-size", type=int, default=None,
                          help="resolution to convert for (position embeddings resampled); default: the trained one")
    official.add_argument("--num-heads", type=int, default=None,
                          help="attention heads, when the width matches no preset (shapes do not record them)")
    hf = kinds.add_parser("hf", help="a transformers IJepaModel folder (config.json + weights)",
                          description="Convert a Hugging Face IJepaModel folder.")
    hf.add_argument("model_dir", help="folder holding config.json and model.safetensors")
    for sub in (official, hf):
        sub.add_argument("--out", required=True, help="output folder (created if needed; its files are replaced)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        sub.set_defaults(func=run)


def _convert_official(args):
    trained = load_trained(args.checkpoint, img_size=args.img_size, num_heads=args.num_heads)  # all three, strict
    model = trained.model
    encoder = model.target_encoder if args.which == "target" else model.encoder
    info = info_from_checkpoint(trained.metadata, args.which, encoder.in_chans)
    out = export_openjepa(encoder, args.out, args.which, info)
    pred = model.predictor.arch()
    detail = f"predictor width {pred['predictor_embed_dim']}, depth {pred['depth']}"
    return encoder, info, out, detail


def _convert_hf(args):
    encoder = load_hf(args.model_dir)
    info = read_hf_info(args.model_dir)
    return encoder, info, export_openjepa(encoder, args.out, "target", info), "from transformers"


def run(args) -> int:
    convert = _convert_official if args.source_kind == "official" else _convert_hf
    encoder, info, out, detail = report_warnings("convert", lambda: convert(args))
    arch = encoder.arch()
    print(f"converted: ViT width {arch['embed_dim']}, depth {arch['depth']}, {arch['num_heads']} heads, patch "
          f"{arch['patch_size']}, {arch['img_size'][0]}x{arch['img_size'][1]} images ({detail}) -> {out}; "
          f"licence {info.license or 'unknown'}")
    return 0
