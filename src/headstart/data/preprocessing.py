"""What a network's weights expect of an image: its size, how it is cut and resized, and the
mean and standard deviation it is normalised with (ImageNet's, Inception's [-1, 1], Caffe's BGR for
the tutorial's VGG16). The cache resizes by it; the model normalises by it itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from headstart.checks import ANY_INPUT_SIZE, Range, check_number
from headstart.errors import ConfigError

if TYPE_CHECKING:  # predicting from an exported file prepares images without PyTorch
    import torch

RESIZES = ("squash", "center_crop")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
MEAN = Range(-10, 10, whole=False, note="in [0, 1] units")
STD = Range(0, 10, low_open=True, whole=False, note="in [0, 1] units")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the input a backbone's weights expect.

    The model takes RGB floats in [0, 1] and applies ``channels``, ``mean`` and ``std`` itself
    (``(x[channels] - mean) / std``, in [0, 1] units), so only resizing happens outside it.
    """

    input_size: int = 224
    # "squash": the whole image to input_size x input_size, as Keras' load_img does (the
    # tutorial); "center_crop": shorter side to input_size, then the centre square.
    resize: str = "squash"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channels: str = "RGB"  # "BGR" for Caffe-style weights (Keras VGG16)

    def __post_init__(self) -> None:
        # Checked when made: a checkpoint's or a saved model's metadata is a claim, not a fact.
        check_number("preprocessing input_size", self.input_size, ANY_INPUT_SIZE)
        for name, value, choices in (
            ("resize", self.resize, RESIZES),
            ("interpolation", self.interpolation, INTERPOLATIONS),
            ("channels", self.channels, ("RGB", "BGR")),
        ):
            if value not in choices:
                raise ConfigError(f"preprocessing {name} must be one of: {', '.join(choices)}. Received: {value!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if not (isinstance(values, tuple) and len(values) == 3):
                raise ConfigError(f"preprocessing {name} is 3 numbers, one a channel. Received: {values!r}")
            for v in values:
                check_number(f"preprocessing {name}", v, STD if name == "std" else MEAN)

    def resize_image(self, image: Image.Image) -> Image.Image:
        """An RGB image at the model's input size."""
        size, method = self.input_size, Image.Resampling[self.interpolation.upper()]
        if self.resize == "squash":
            return image.resize((size, size), method)
        if self.resize != "center_crop":
            raise ConfigError(f"Unknown resize '{self.resize}'. Use 'squash' or 'center_crop'.")
        # The centre square of the source, resized: nearly the same as shorter side to size then the
        # centre crop, without ever making the (possibly huge) intermediate image of a long thin one.
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        return image.resize((size, size), method, box=(left, top, left + side, top + side))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> a float tensor (3, size, size) in [0, 1], what models take."""
        import torch

        arr = np.array(self.resize_image(image.convert("RGB")), dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


IMAGENET = Preprocessing()
# Inputs scaled to [-1, 1]: TensorFlow-trained weights such as EfficientNet-Lite0's.
INCEPTION = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Keras' imagenet_utils.preprocess_input(mode="caffe"): BGR, ImageNet mean subtracted in 0-255
# units, no scaling. In [0, 1] units that is mean/255 and std 1/255.
CAFFE = Preprocessing(
    mean=(103.939 / 255, 116.779 / 255, 123.68 / 255), std=(1 / 255, 1 / 255, 1 / 255), channels="BGR"
)
