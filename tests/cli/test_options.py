"""Options are declared once (headstart.cli.options) and every command that takes one takes the same."""

from __future__ import annotations

import collections
import typing

import pytest

from headstart.cli import options
from headstart.cli.main import app

# The options that mean the same thing in every command that has them.
SHARED = [
    "data",
    "layout",
    "allow_outside_root",
    "seed",
    "strategy",
    "recipe",
    "freeze_layers",
    "epochs",
    "force_input_size",
    "class_weights",
    "sampler",
    "monitor",
    "accelerator",
    "devices",
    "num_nodes",
    "lr_find",
    "device",
]
# Where a command's own meaning differs, and why: advise probes one int size and backbone (no "auto", no
# None); backbones' --weights and --name are about the table; predict's batch is a forward pass; predict
# and serve's --tta has no figure to record; train's DATA may come from --resume; evaluate's --data is other data,
# and its --allow-outside-root defaults to the run's; lr-find's batch is on one device.
OWN = {
    ("advise", "input_size"),
    ("advise", "backbone"),
    ("backbones", "weights"),
    ("backbones", "name"),
    ("train", "data"),
    ("evaluate", "data"),
    ("evaluate", "allow_outside_root"),
    ("lr_find", "batch_size"),
}


def _declarations() -> dict[str, dict[str, object]]:
    found = collections.defaultdict(dict)
    for command in app.registered_commands:
        hints = typing.get_type_hints(command.callback, include_extras=True)
        for name, hint in hints.items():
            if name not in ("return", "ctx"):
                found[name][command.callback.__name__] = hint
    return found


@pytest.mark.parametrize("name", SHARED)
def test_a_shared_option_is_one_declaration(name):
    uses = {c: h for c, h in _declarations()[name].items() if (c, name) not in OWN}
    assert len(uses) >= 2, f"{name} is in SHARED but only {list(uses)} take it"
    assert len({id(h) for h in uses.values()}) == 1, f"{name} is declared more than once: {list(uses)}"
    assert any(uses[next(iter(uses))] is getattr(options, a) for a in dir(options)), name


def test_the_declaration_check_sees_two_declarations():
    from typing import Annotated

    import typer

    one = Annotated[int, typer.Option(help="x")]
    other = Annotated[int, typer.Option(help="x")]
    assert id(one) != id(other)  # two declarations stay two, so the test above can fail
