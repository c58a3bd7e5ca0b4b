"""The checks a CSV manifest goes through before any image is read: its rows (with the line each starts
on, the header left out), every path inside the manifest's folder, and every file listed once (a file
in two splits would be trained on and evaluated).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from headstart.data.images import is_inside, read_text, real_path
from headstart.errors import DataError


def manifest_rows(manifest: Path) -> list[tuple[int, list[str]]]:
    """The manifest's rows that are not blank, each with the number of the line it starts on; the
    header (``path,label[,split]``, or ``labels``) left out."""
    reader = csv.reader(io.StringIO(read_text(manifest), newline=""))
    rows, end = [], 0  # end: the last line of the row before
    try:
        for row in reader:
            if any(c.strip() for c in row):
                rows.append((end + 1, row))
            end = reader.line_num
    except csv.Error as e:
        raise DataError(
            f"{manifest}, line {reader.line_num}: not a CSV row ({e}). Write one row a line: path,label[,split]."
        ) from None
    if rows and [c.strip().lower() for c in rows[0][1][:2]] in (["path", "label"], ["path", "labels"]):
        rows = rows[1:]
    return rows


def check_inside(manifest: Path, entries: list, paths: list[Path], reals: list[str]) -> None:
    """Every path of the manifest is inside its folder, as written or with links followed."""
    base = manifest.parent
    lexical_base, real_base = os.path.abspath(base), real_path(base)
    outside = [
        (n, rel)
        for (n, rel, _, _), path, real in zip(entries, paths, reals)
        if not is_inside(os.path.normpath(os.path.abspath(path)), lexical_base) and not is_inside(real, real_base)
    ]
    if outside:
        (n, rel), more = outside[0], len(outside) - 1
        others = f" (and {more} more line{'s' if more > 1 else ''}, e.g. line {outside[1][0]})" if more else ""
        raise DataError(
            f"{manifest}, line {n}: '{rel}' is outside the dataset's folder {base}{others}. A manifest lists "
            "images inside its own folder: move it to a folder that holds every image (paths relative to it), "
            "or pass --allow-outside-root (allow_outside_root=True) to read images from elsewhere."
        )


def check_listed_once(manifest: Path, entries: list, reals: list[str]) -> None:
    """Every file is on one line of the manifest: a file listed twice is counted twice, and with
    two splits (or drawn splits) it is in training and in evaluation, a leak."""
    by_file: dict[str, list[int]] = {}
    for i, real in enumerate(reals):
        by_file.setdefault(real, []).append(i)
    repeated = [(real, idx) for real, idx in by_file.items() if len(idx) > 1]
    if not repeated:
        return
    details = []
    for real, idx in repeated[:3]:
        numbers = [str(entries[i][0]) for i in idx]
        lines = f"lines {', '.join(numbers[:-1])} and {numbers[-1]}"
        labels = list(dict.fromkeys(entries[i][2] for i in idx))
        splits = list(dict.fromkeys(entries[i][3] or "training" for i in idx))
        if len(labels) > 1:
            details.append(f"{lines} give {real} different labels ({', '.join(repr(x) for x in labels)})")
        elif len(splits) > 1:
            details.append(
                f"{lines} put {real} in the {' and the '.join(splits)} split"
                + (" (a leak: it would be trained on and evaluated)" if "training" in splits else "")
            )
        else:
            details.append(f"{lines} list {real} more than once")
    more = f"; and {len(repeated) - 3} more file(s)" if len(repeated) > 3 else ""
    raise DataError(
        f"{manifest} lists a file more than once: {'; '.join(details)}{more}. Each image goes on one line, "
        "with one label and one split: delete the other lines."
    )
