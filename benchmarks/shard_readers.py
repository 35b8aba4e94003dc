"""Reading tar shards without decoding: openjepa's reader vs Python's tarfile vs the ``webdataset`` package.

    python benchmarks/shard_readers.py SHARD_PATTERN [--repeats 3]
    python benchmarks/shard_readers.py /tmp/fm-shards/train-{000000..000007}.tar     # quote braces in a shell

Measures, per reader, samples per second of getting every sample's image bytes (no image decoding: that cost is
the same for all readers and is what benchmarks/data_throughput.py measures), plus the time openjepa takes to
index the shards (headers only). Readers:

* ``openjepa_index``: building openjepa's index (tar headers and ``.cls`` members only);
* ``openjepa_sequential``: the index, then every image's bytes in stored order (what a training worker does);
* ``tarfile_stream``: Python's ``tarfile`` in streaming mode (``r|``), grouping members by key;
* ``tarfile_index``: ``tarfile`` listing the members (seeking past data), for comparison with openjepa_index;
* ``webdataset``: ``webdataset.WebDataset(urls)`` iterated raw, when the package is installed (it is not an
  openjepa dependency; ``pip install webdataset`` to include it).

Readers run interleaved, ``--repeats`` times each, with the page cache warm (one untimed pass first); the best
time of each is reported. Results are printed as JSON and written to benchmarks/results/shard_readers.json.
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

from _report import machine_info, publish

from openjepa.data.shard_index import build_index, expand_shard_paths


def openjepa_index(paths: list[str]) -> int:
    return len(build_index(paths, progress=False))


def openjepa_sequential(paths: list[str]) -> int:
    index = build_index(paths, progress=False)
    count = 0
    for number, path in enumerate(paths):
        with open(path, "rb") as f:
            for i in (index.shard == number).nonzero()[0]:
                f.seek(int(index.offset[i]))
                count += len(f.read(int(index.size[i]))) > 0
    return count


def tarfile_stream(paths: list[str]) -> int:
    count = 0
    for path in paths:
        with tarfile.open(path, mode="r|") as tar:
            key = None
            for info in tar:
                data = tar.extractfile(info).read() if info.isfile() else b""
                stem = info.name.rpartition("/")[2].partition(".")[0]
                if stem != key:
                    key = stem
                    count += 1
                del data
    return count


def tarfile_index(paths: list[str]) -> int:
    count = 0
    for path in paths:
        with tarfile.open(path) as tar:
            count += sum(1 for info in tar if info.name.endswith((".jpg", ".png", ".jpeg", ".webp")))
    return count


def webdataset_reader(paths: list[str]) -> int:
    import webdataset

    return sum(1 for _ in webdataset.WebDataset(paths, shardshuffle=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="+", help="shard files or patterns (brace ranges, globs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shard_readers.json")
    args = parser.parse_args()
    paths = expand_shard_paths(args.shards)
    readers = {"openjepa_index": openjepa_index, "openjepa_sequential": openjepa_sequential,
               "tarfile_stream": tarfile_stream, "tarfile_index": tarfile_index}
    try:
        import webdataset  # noqa: F401

        readers["webdataset"] = webdataset_reader
    except ImportError:
        pass
    samples = openjepa_index(paths)
    for reader in readers.values():  # warm the page cache and the imports
        reader(paths)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, reader in readers.items():
            start = time.perf_counter()
            reader(paths)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    total_bytes = sum(Path(p).stat().st_size for p in paths)
    publish({
        "benchmark": "shard_readers", "shards": len(paths), "samples": samples, "bytes": total_bytes,
        "results": {name: {"seconds": round(s, 4), "samples_per_s": round(samples / s, 1)} for name, s in best.items()},
        "machine": machine_info(),
    }, args.out)


if __name__ == "__main__":
    main()
