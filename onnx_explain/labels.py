"""Class names: read from a labels file, or found in what a model file already carries.

Formats understood, for files and metadata values alike:

* a JSON list: ``["cat", "dog"]``;
* a JSON object or Python dict literal from class index to name, as Ultralytics writes
  into its ONNX files: ``{0: 'person', 1: 'bicycle'}`` (indices 0..n-1, each once);
* plain text, one name per line (blank lines skipped, names kept whole, commas and all:
  ImageNet's ``"tench, Tinca tinca"`` is one class); in model metadata also one line of
  comma-separated names when that gives exactly one name per class.

Model files carry their class list under a handful of ``metadata_props`` keys
(:data:`MODEL_LABEL_KEYS`); a value is offered only when it has exactly one name per
class, so an unrelated key of the same name is never taken for the labels.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

__all__ = ["MODEL_LABEL_KEYS", "parse_labels", "read_labels_file", "labels_from_metadata"]

# Keys exporters use for the class list (Ultralytics: "names"; others: the rest).
MODEL_LABEL_KEYS = ("labels", "classes", "class_names", "names")


def _from_structure(value: object) -> list[str] | None:
    """A parsed list, or an {index: name} mapping, as a list of names; None otherwise."""
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return [str(v) for v in value]
        return None
    if isinstance(value, dict):
        try:
            by_index = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            return None
        if sorted(by_index) != list(range(len(by_index))):
            return None
        return [by_index[i] for i in range(len(by_index))]
    return None


def parse_labels(text: str) -> list[str]:
    """Class names from the text of a labels file or a metadata value (see the module doc)."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{", "("):
        value: object = None
        try:
            value = json.loads(stripped)
        except ValueError:
            try:
                value = ast.literal_eval(stripped)  # literals only: never runs code
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                value = None
        names = _from_structure(value)
        if names is not None:
            return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_labels_file(path: str | Path) -> list[str]:
    """The class names in a labels file (JSON list or mapping, or one name per line)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file of class names") from None
    names = parse_labels(text)
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    return names


def labels_from_metadata(props: dict[str, str], num_classes: int) -> tuple[str | None, list[str] | None, list[str]]:
    """Look for a class list in a model's ``metadata_props``.

    Returns ``(key, names, notes)``: the first key of :data:`MODEL_LABEL_KEYS` (matched
    without regard to case) whose value has exactly ``num_classes`` names, and one note
    per such key that was passed over (the reason, to tell the user).
    """
    notes: list[str] = []
    by_key = {k.strip().lower(): k for k in props}
    for wanted in MODEL_LABEL_KEYS:
        key = by_key.get(wanted)
        if key is None:
            continue
        names = parse_labels(props[key])
        if len(names) == 1 and num_classes > 1 and len(names[0].split(",")) == num_classes:
            names = [n.strip() for n in names[0].split(",")]  # "cat,dog,bird" on one line
        if len(names) == num_classes:
            return key, names, notes
        notes.append(f"metadata key {key!r} holds {len(names)} names for {num_classes} classes; not used as labels")
    return None, None, notes
