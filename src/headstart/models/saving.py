"""A trained model in one file: ``save_model`` writes its weights, how to rebuild it, its preprocessing
and its class names as safetensors (no pickle); ``load_saved_model`` reads it back, checked.

>>> save_model(model, "model.safetensors", {"classes": ["cat", "dog"]})      # doctest: +SKIP
>>> model, extra = load_saved_model("model.safetensors")                     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from headstart.data.preprocessing import Preprocessing
from headstart.errors import WeightsError
from headstart.models.classifier import Classifier
from headstart.models.factory import create_model
from headstart.utils.files import write_atomically

# --- saving and loading, preprocessing included --------------------------------------------


def save_model(model: Classifier, path: str | Path, extra: dict | None = None) -> Path:
    """Write the weights and everything needed to rebuild the model (config, preprocessing,
    ``extra`` such as class names) to one ``.safetensors`` file."""
    import json

    from safetensors.torch import save

    meta = {
        "headstart": json.dumps(
            {"config": model.config, "preprocessing": model.preprocessing.to_dict(), **(extra or {})}
        )
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return write_atomically(Path(path), lambda f: f.write(save(state, metadata=meta)))


def load_saved_model(path: str | Path) -> tuple[Classifier, dict]:
    """A model written by ``save_model``, with the preprocessing it was trained with, and its extras."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("headstart", "null") or "null")
    if not meta:
        raise WeightsError(f"{path} was not written by headstart (no 'headstart' metadata).")
    model = rebuild_model(meta.pop("config"), load_file(str(path)), meta.pop("preprocessing"))
    return model, meta


def rebuild_model(config: dict, state: dict, preprocessing: dict) -> Classifier:
    """A model as ``create_model(**config)`` built it, with saved weights and preprocessing."""
    model = create_model(**{**config, "weights": "none"})  # the saved tensors replace the weights
    model.load_state_dict(state)
    model.set_preprocessing(Preprocessing.from_dict(preprocessing))
    return model
