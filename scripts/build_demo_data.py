"""Build headstart's embedded demo dataset from Debian's Fashion-MNIST package.

The demo set is a small, real photo dataset in the Food-11 layout that ships inside the
package so ``make demo`` and the tests never need a download. It is rebuilt, byte for byte,
by this script:

    apt-get download dataset-fashion-mnist          # any directory; needs apt, not root
    python scripts/build_demo_data.py dataset-fashion-mnist_*.deb

The selection is deterministic: for every class, the first 100 images of Fashion-MNIST's
training file (in file order) go to ``training/``, the next 20 to ``validation/``, and the
first 30 of its test file to ``evaluation/``. Images stay the original 28x28 greyscale PNGs.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# Fashion-MNIST's class names, in label order (from the dataset's README).
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PER_CLASS = {"training": 100, "validation": 20, "evaluation": 30}
OUT = Path(__file__).resolve().parents[1] / "src" / "headstart" / "demo_data"
SOURCE = "usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format: big-endian header, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def pick(labels: np.ndarray, start: int, count: int) -> dict[int, list[int]]:
    """Indices of images start..start+count-1 of every class, in file order."""
    return {c: list(np.flatnonzero(labels == c)[start : start + count]) for c in range(len(CLASSES))}


def build(deb: Path, out: Path = OUT) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        src = Path(tmp) / SOURCE
        train_x, train_y = read_idx(src / "train-images-idx3-ubyte.gz"), read_idx(src / "train-labels-idx1-ubyte.gz")
        test_x, test_y = read_idx(src / "t10k-images-idx3-ubyte.gz"), read_idx(src / "t10k-labels-idx1-ubyte.gz")
        licence = (Path(tmp) / "usr/share/doc/dataset-fashion-mnist/copyright").read_text()

    plan = {
        "training": (train_x, pick(train_y, 0, PER_CLASS["training"])),
        "validation": (train_x, pick(train_y, PER_CLASS["training"], PER_CLASS["validation"])),
        "evaluation": (test_x, pick(test_y, 0, PER_CLASS["evaluation"])),
    }
    if out.exists():
        shutil.rmtree(out)
    for split, (images, chosen) in plan.items():
        (out / split).mkdir(parents=True)
        for label, indices in chosen.items():
            for index in indices:
                # Named like Food-11: <class id>_<index in the original file>.png
                Image.fromarray(images[index], mode="L").save(out / split / f"{label}_{index}.png", optimize=True)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "LICENSE").write_text(
        "The images in this folder are a subset of Fashion-MNIST by Zalando Research\n"
        "(https://github.com/zalandoresearch/fashion-mnist), taken from Debian's package\n"
        "dataset-fashion-mnist and rebuilt by scripts/build_demo_data.py.\n\n"
        "Copyright (c) 2017 Zalando SE. Released under the MIT (Expat) licence:\n\n" + licence
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("deb", type=Path, help="path to dataset-fashion-mnist_*.deb")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT})")
    args = parser.parse_args(argv)
    if not args.deb.is_file():
        print(f"error: {args.deb} is not a file; get it with `apt-get download dataset-fashion-mnist`", file=sys.stderr)
        return 2
    build(args.deb, args.out)
    print(f"wrote {sum(1 for _ in args.out.rglob('*.png'))} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
