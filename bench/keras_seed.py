"""The tutorial's Keras code and headstart's `--recipe seed`, side by side on the demo data.

    python bench/keras_seed.py [--strategy partial|features|full] [--input-size 64] [--epochs 5]
                               [--lockstep] [--out bench-out/keras-seed]

Keras 3 (its PyTorch backend; `pip install 'keras>=3.5'`) runs the tutorial's code as written:
VGG16(include_top=False) -> GlobalAveragePooling2D -> Dropout(0.2) -> Dense(100, relu) ->
Dense(C, softmax), Adam(1e-5), categorical_crossentropy, batch 32, shuffle=True, the best weights
by val_loss (ModelCheckpoint), freezing `layers[:-9]` (partial: the tutorial's "half network"),
every convolution (features) or nothing (full). headstart runs `fit(recipe="seed")` with the
same strategy.

Weights: there are no ImageNet VGG16 weights offline, so both start from the same random ones:
Keras draws its VGG16 (Glorot-uniform, seed 0) and saves it as a Keras .h5 file, which headstart
loads as it would the tutorial's (Caffe preprocessing: BGR, ImageNet mean subtracted, 0-255); the
head's two Dense layers are copied into headstart's head before training. Images: headstart's
split of the demo photos, decoded and resized once (headstart's cache) and fed to both, Keras'
through `imagenet_utils.preprocess_input`.

What still differs, as written: the order of the images (Keras shuffles with its own generator,
headstart with its seeded sampler), so every batch holds other images; the dropout masks; and
headstart stores partial's frozen activations in fp16. `--lockstep` removes those three: Keras is
fed each epoch in headstart's order (shuffle=False), dropout is 0 on both sides and the frozen
part is recomputed every epoch in float32; the curves then agree to the third decimal (float32
rounding, summed in different orders, grows over a hundred steps).

Per epoch, both sides' training loss and accuracy, validation loss and accuracy, printed as a
table and written to OUT/keras_seed.csv and OUT/keras_seed.md, with each side's evaluation accuracy
(its best checkpoint by val_loss on the evaluation split).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported: TensorFlow is not needed
os.environ.setdefault("KERAS_TORCH_DEVICE", "cpu")  # both sides on the CPU, as headstart runs in this script

import keras  # noqa: E402
import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from headstart.config import resolve_config  # noqa: E402
from headstart.data.cache import decoded_images  # noqa: E402
from headstart.data.dataset import (
    load_dataset_for,  # noqa: E402
    split_indices,  # noqa: E402
)
from headstart.data.preprocessing import CAFFE  # noqa: E402
from headstart.data.samplers import seed_of
from headstart.training.fit import fit  # noqa: E402

COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy")


def keras_model(strategy: str, size: int, classes: int, dropout: float):
    """The tutorial's model and compile, frozen as ``strategy`` says."""
    keras.utils.set_random_seed(0)
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
    frozen = {"partial": vgg.layers[:-9], "features": vgg.layers, "full": []}[strategy]
    for layer in frozen:
        layer.trainable = False
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            vgg,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(
        loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(learning_rate=1e-5), metrics=["accuracy"]
    )
    return model, vgg


class CopyHead(L.Callback):
    """Keras' head weights into headstart's head when training starts (after the head was built)."""

    def __init__(self, dense_layers):
        self.arrays = [(np.asarray(d.kernel).T, np.asarray(d.bias)) for d in dense_layers]

    def on_fit_start(self, trainer, module) -> None:
        linear = [m for m in module.model.head if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, (kernel, bias) in zip(linear, self.arrays, strict=True):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
                lin.bias.copy_(torch.from_numpy(bias))


def run_keras(model, data: dict, epochs: int, batch: int, order, folder: Path) -> tuple[list[dict], float]:
    """The tutorial's fit (or, with ``order``, one fit per epoch in that order) and its best checkpoint's
    evaluation accuracy."""
    (x, y), val = data["training"], data["validation"]
    best = folder / "best.weights.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(best), monitor="val_loss", save_best_only=True, save_weights_only=True
    )
    if order is None:
        history = model.fit(
            x, y, batch_size=batch, epochs=epochs, validation_data=val, callbacks=[checkpoint], shuffle=True, verbose=2
        ).history
    else:
        history = {c: [] for c in COLUMNS}
        for epoch in range(epochs):
            p = order(epoch)
            h = model.fit(
                x[p],
                y[p],
                batch_size=batch,
                epochs=1,
                validation_data=val,
                callbacks=[checkpoint],
                shuffle=False,
                verbose=2,
            ).history
            for c in COLUMNS:
                history[c] += h[c]
    model.load_weights(str(best))
    ex, ey = data["evaluation"]
    accuracy = float((model.predict(ex, batch_size=64, verbose=0).argmax(1) == ey.argmax(1)).mean())
    return [{c: float(history[c][e]) for c in COLUMNS} for e in range(epochs)], accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="partial", choices=("partial", "features", "full"))
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--lockstep", action="store_true", help="Keras in headstart's order, no dropout, no fp16 cache."
    )
    parser.add_argument("--out", default="bench-out/keras-seed")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    dropout = 0.0 if args.lockstep else 0.2

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options = dict(
            data="demo",
            backbone="vgg16",
            strategy=args.strategy,
            input_size=args.input_size,
            epochs=args.epochs,
            runs_dir=str(tmp / "runs"),
            head_dropout=dropout,
            accelerator="cpu",
            **({"freeze_layers": 10} if args.strategy == "partial" else {}),
            **({"cache_frozen": False} if args.lockstep else {}),
        )
        cfg = resolve_config("seed", overrides=options)
        # The demo photos as headstart splits and decodes them, for Keras too.
        ds = load_dataset_for(cfg)
        ds, store = decoded_images(ds, dataclasses.replace(CAFFE, input_size=args.input_size), progress=False)
        data = {}
        for split, (idx, labels) in split_indices(ds).items():
            pixels = np.stack([np.asarray(store[i], dtype=np.float32) for i in idx])  # RGB 0-255
            data[split] = (
                keras.applications.imagenet_utils.preprocess_input(pixels),
                np.eye(ds.num_classes, dtype=np.float32)[labels],
            )

        model, vgg = keras_model(args.strategy, args.input_size, ds.num_classes, dropout)
        vgg.save(tmp / "vgg16_random.h5")  # Keras' own (legacy) .h5 file, as the tutorial's weights come
        head = CopyHead([layer for layer in model.layers if isinstance(layer, keras.layers.Dense)])
        n_train = len(data["training"][0])

        def order(epoch: int) -> np.ndarray:  # headstart's EpochSampler order
            return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed_of(cfg.seed, epoch))).numpy()

        start = time.perf_counter()
        keras_rows, keras_eval = run_keras(
            model, data, args.epochs, cfg.batch_size, order if args.lockstep else None, tmp
        )
        keras_seconds = time.perf_counter() - start
        start = time.perf_counter()
        run = fit(config=dataclasses.replace(cfg, weights=str(tmp / "vgg16_random.h5")), callbacks=[head])
        ours_seconds = time.perf_counter() - start
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    rows = [
        {"epoch": e + 1, **{f"keras_{c}": k[c] for c in COLUMNS}, **{f"headstart_{c}": h[c] for c in COLUMNS}}
        for e, (k, h) in enumerate(zip(keras_rows, run.history))
    ]
    with open(out / "keras_seed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    mode = (
        "lockstep (headstart's order, dropout 0, fp32)" if args.lockstep else "as written (own shuffles, dropout 0.2)"
    )
    lines = [
        f"VGG16 from the same random weights (no ImageNet weights offline), {args.strategy}, {args.input_size} px, "
        f"demo data ({n_train} training images, {ds.num_classes} classes), batch 32, Adam 1e-5; {mode}. "
        f"Trainable: Keras {trainable:,}, headstart {run.metrics['trainable_params']:,}.",
        "",
        "| epoch | loss Keras | loss headstart | acc Keras | acc headstart | val_loss Keras | val_loss headstart "
        "| val_acc Keras | val_acc headstart |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r[f'{side}_{c}']:.4f}" for c in COLUMNS for side in ("keras", "headstart")]
        lines.append(f"| {r['epoch']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Evaluation accuracy (best epoch by val_loss): Keras {keras_eval:.4f}, headstart "
        f"{run.metrics['accuracy']:.4f}. Time: Keras {keras_seconds:.0f} s, headstart {ours_seconds:.0f} s.",
    ]
    text = "\n".join(lines)
    (out / "keras_seed.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
