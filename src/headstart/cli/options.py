"""The command line's options, declared once (``Annotated`` aliases) and shared by every command that takes them.

Choices come from the lists the library checks against, so ``--help``, completion and validation agree
with the Python API. A command gives each option its default in its own signature (``None``: the
recipe's or the saved config's value, shown by ``show_default``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from headstart.checks import ENGINE_PRECISIONS, ENGINES, INPUT_SIZES
from headstart.config import (
    ACCELERATORS,
    AVERAGES,
    CLASS_WEIGHTS,
    HEAD_SEARCHES,
    MONITORS,
    RECIPES,
    SAMPLERS,
    STRATEGIES,
    TASKS,
)
from headstart.data.layouts import LAYOUTS, SPLITS
from headstart.inference.prediction import EXPLAIN_METHODS

StrategyName = Literal[(*STRATEGIES, "auto")]
RecipeName = Literal[tuple(RECIPES)]
LayoutName = Literal[LAYOUTS]
AcceleratorName = Literal[ACCELERATORS]
SplitName = Literal[SPLITS]
PrintFormat = Literal["table", "json", "csv"]

DATA_HELP = "Dataset folder (food11, folders layout), CSV manifest, or the word 'demo'."
INPUT_SIZE_HELP = f"Input size in pixels, {INPUT_SIZES.low:g}-{INPUT_SIZES.high:g}."
TTA_HELP = "Test-time augmentation: also average each image's probabilities with its mirror image's."
LR_FIND_HELP = "Run the learning-rate finder first and train the head at the rate it suggests (one device)."
WEIGHTS_HELP = "default, bundled, hub, none, or a file."

# --- what a command works on ------------------------------------------------------------------------------
Data = Annotated[str, typer.Argument(help=DATA_HELP)]
RunSource = Annotated[
    Path, typer.Argument(help="A run folder (runs/NAME), a .ckpt checkpoint or a saved .safetensors model.")
]
ModelSource = Annotated[
    Path,
    typer.Argument(
        help=(
            "A run folder (runs/NAME), a .ckpt checkpoint, a saved .safetensors model, or an exported .onnx "
            "or .xml (OpenVINO) file (run without PyTorch)."
        )
    ),
]
Layout = Annotated[
    Optional[LayoutName], typer.Option(help=f"Force a layout: {', '.join(LAYOUTS)}.", show_default="detected")
]
AllowOutsideRoot = Annotated[
    Optional[bool],
    typer.Option(
        "--allow-outside-root", help="Let a CSV manifest list images outside its own folder.", show_default="off"
    ),
]
Task = Annotated[
    Optional[Literal[TASKS]],
    typer.Option(
        help="single (one class an image), multi (several: a manifest's label rice|egg), or auto: multi when a "
        "manifest row names several classes.",
        show_default="auto",
    ),
]
ValFraction = Annotated[float, typer.Option(help="Share of training drawn for validation when the data has none.")]
EvalFraction = Annotated[float, typer.Option(help="Share of training drawn for evaluation when the data has none.")]
StreamCacheGb = Annotated[
    Optional[float],
    typer.Option(
        min=0.001,
        help="Prepared shards at a URL: the most this machine caches of them, in GB (shards are streamed).",
        show_default="50",
    ),
]
Exclude = Annotated[
    Optional[str],
    typer.Option(
        help="A CSV whose first column lists images to leave out: headstart audit's suspects.csv, edited.",
        show_default="none",
    ),
]
MaxPixels = Annotated[int, typer.Option(min=1, help="Refuse images with more pixels (decompression bombs).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.", show_default="0")]

# --- the model ----------------------------------------------------------------------------------------------
Backbone = Annotated[
    Optional[str], typer.Option(help="Curated name or any timm model.", show_default="efficientnet_lite0")
]
Weights = Annotated[Optional[str], typer.Option(help=WEIGHTS_HELP, show_default="default")]
Strategy = Annotated[
    Optional[StrategyName],
    typer.Option(
        help="features, partial, half, full, gradual, scratch, or auto (headstart advise).", show_default="features"
    ),
]
Recipe = Annotated[
    Optional[RecipeName],
    typer.Option(help="default (AdamW, cosine, augmentation...) or seed (the tutorial's).", show_default="default"),
]
FreezeLayers = Annotated[
    Optional[int],
    typer.Option(help="partial/half, vgg16: Keras layers frozen (the tutorial's half: 10).", show_default="by groups"),
]
InputSize = Annotated[
    Optional[str],
    typer.Option(
        help=INPUT_SIZE_HELP[:-1] + ", or auto: the size headstart advise measures best (2-3 sizes probed first).",
        show_default="the weights': 224",
    ),
]
ForceInputSize = Annotated[
    Optional[bool],
    typer.Option("--force-input-size", help="Allow an --input-size outside that range.", show_default="off"),
]

# --- training -----------------------------------------------------------------------------------------------
Epochs = Annotated[Optional[int], typer.Option(help="Epochs.", show_default="recipe: 15 default, 10 seed")]
BatchSize = Annotated[
    Optional[int], typer.Option(help="Global batch size, shared among the devices.", show_default="32")
]
ClassWeights = Annotated[
    Optional[Literal[CLASS_WEIGHTS]],
    typer.Option(
        help="auto: weigh each class's loss by its inverse frequency, N / (C * n_c) (imbalanced data).",
        show_default="none",
    ),
]
Sampler = Annotated[
    Optional[Literal[SAMPLERS]],
    typer.Option(
        help="balanced: each epoch draws every class equally often (with replacement).", show_default="random"
    ),
]
Monitor = Annotated[
    Optional[Literal[MONITORS]],
    typer.Option(
        help="What the best checkpoint and early stopping go by (val_loss lowest, the others highest).",
        show_default="val_loss",
    ),
]
Average = Annotated[
    Optional[Literal[AVERAGES]],
    typer.Option(
        help="Weight averaging of what trains: ema (every step) or swa (last quarter's epochs); validated and saved "
        "averaged.",
        show_default="none",
    ),
]
Accelerator = Annotated[
    Optional[AcceleratorName], typer.Option(help="cpu, gpu or auto (a GPU where there is one).", show_default="auto")
]
Devices = Annotated[
    Optional[str],
    typer.Option(
        help="Devices per machine, one process each: a count, ids (0,1), or auto.",
        show_default="auto: every GPU, or 1 CPU process",
    ),
]
NumNodes = Annotated[Optional[int], typer.Option(help="Machines, for torchrun or SLURM.", show_default="1")]
Tta = Annotated[
    Optional[bool], typer.Option("--tta", help=TTA_HELP + " Both accuracies are recorded.", show_default="off")
]
LrFind = Annotated[Optional[bool], typer.Option("--lr-find", help=LR_FIND_HELP, show_default="off")]
HeadSearchOption = Annotated[
    Optional[Literal[HEAD_SEARCHES]],
    typer.Option(
        "--head-search",
        help="features, gradual: fit 10 heads on the cached features first (the tutorial's at 3 learning rates and "
        "2 weight decays, a logistic regression at 4 L2 strengths) and train the one best on validation by --monitor "
        "(kept over the run's own head only when better beyond chance); off: the head as given.",
        show_default="auto; seed: off",
    ),
]

# --- what runs the layers that only infer (headstart.engines) ---------------------------------------------
EngineOption = Annotated[
    Optional[Literal[ENGINES]],
    typer.Option(
        "--engine",
        help="What runs the layers that only infer (frozen pass, evaluation, prediction): auto (on a CPU, for a pass "
        "long enough to pay for converting, the faster of ONNX Runtime and OpenVINO that matches PyTorch; PyTorch on "
        "a GPU), torch, onnxruntime or openvino. Training always runs in PyTorch.",
        show_default="auto",
    ),
]
EnginePrecision = Annotated[
    Optional[Literal[ENGINE_PRECISIONS]],
    typer.Option(help="fp32, or bf16: OpenVINO on a CPU with bf16 units (AMX, AVX-512 BF16).", show_default="fp32"),
]
AugViews = Annotated[
    Optional[str],
    typer.Option(
        help="features, partial, half: K augmented views of each training image through the frozen layers once "
        "(fp16); each epoch reads one. auto: partial and half with augmentation take up to 8 that fit the budget "
        "(at least 4); 0: off.",
        show_default="auto",
    ),
]

# --- using a model ------------------------------------------------------------------------------------------
Device = Annotated[str, typer.Option(help="auto (a GPU where there is one), cpu, gpu or cuda:N.")]
ProbeInputSize = Annotated[
    Optional[int], typer.Option("--input-size", help=INPUT_SIZE_HELP, show_default="the weights'")
]
ExplainMethod = Literal[EXPLAIN_METHODS]
TopK = Annotated[int, typer.Option(min=1, help="Classes shown per image.")]
Threshold = Annotated[
    Optional[float],
    typer.Option(
        min=0.0,
        max=1.0,
        help="Multi-label models: one threshold for every class (a label is given at or above it).",
        show_default="each class's, chosen on validation",
    ),
]
