"""Check the lean install of docs/deploy.md ("Without PyTorch") for real: a fresh venv with headstart installed
``--no-deps`` and the ``runtime`` extra's packages (read from pyproject.toml, so the extra is what is checked),
then ``headstart predict`` and ``serve``'s app on an exported file, and PyTorch nowhere in the venv.

    python scripts/lean_install.py RUN/export/model-int8.onnx photo.jpg [--venv /tmp/lean]

Prints the venv's size and the prediction; exits 1 if anything fails. Needs Python 3.11+ (tomllib), pip's
package index (or the local wheels), and about half a minute.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="An exported .onnx file (headstart export RUN).")
    parser.add_argument("image", help="A photo to predict.")
    parser.add_argument("--venv", default="/tmp/headstart-lean", help="Where the lean venv goes.")
    args = parser.parse_args(argv)
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["runtime"]
    env = Path(args.venv)
    if not (env / "bin" / "python").exists():
        venv.create(env, with_pip=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True)
    subprocess.run([*pip, *runtime], check=True)
    python = str(env / "bin" / "python")
    absent = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if absent != "True":
        print("torch is installed in the lean venv: the runtime extra pulls it in", file=sys.stderr)
        return 1
    done = subprocess.run([str(env / "bin" / "headstart"), "predict", args.model, args.image, "--format", "json"])
    serve = (
        "from headstart.inference.loading import load; from headstart.inference.serve import create_app; "
        f"create_app(load({args.model!r})); print('serve: app built')"
    )
    served = subprocess.run([python, "-c", serve])
    size = subprocess.run(["du", "-sh", str(env)], capture_output=True, text=True).stdout.split()[0]
    print(f"lean venv {env}: {size}, no torch; runtime extra: {' '.join(runtime)}")
    return 0 if done.returncode == 0 and served.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
