"""Write Fashion-MNIST training images as image files in class sub-folders (input for the data benchmarks).

    python benchmarks/make_image_folder.py /tmp/fm-folder --count 5000 --format jpg
    python benchmarks/make_image_folder.py /tmp/fm-folder-64 --count 5000 --size 64 --format png

Reads the Debian package's IDX files (``sudo apt-get install dataset-fashion-mnist``) or ``--path``. Images are
written as ``DIR/<class>/<n>.<format>``, optionally upscaled (bicubic) to ``--size`` pixels, with a progress bar.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from openjepa.data import DataConfig, build_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--size", type=int, default=28, help="side in pixels (28: as stored)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--path", default=None, help="the Fashion-MNIST IDX folder (default: the Debian package's)")
    args = parser.parse_args()
    source = build_source(DataConfig(dataset="fashion_mnist", path=args.path), "train")
    for i in tqdm(range(min(args.count, len(source))), unit="img", desc=f"writing {args.out}"):
        folder = args.out / source.classes[source.labels[i]].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(source.images[i])
        if args.size != img.size[0]:
            img = img.resize((args.size, args.size), Image.BICUBIC)
        img.save(folder / f"{i:06d}.{args.format}", quality=90) if args.format == "jpg" else \
            img.save(folder / f"{i:06d}.png")


if __name__ == "__main__":
    main()
