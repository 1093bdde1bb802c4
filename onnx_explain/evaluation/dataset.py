"""A small, real localization set built offline from the photos shipped with scikit-image.

Objects are hand-chosen rectangles cut out of ``skimage.data`` photos (the crop
rectangles were picked by looking at the images so that each holds the object and
little else); each image pastes one (or a few, not overlapping) of them, scaled, at a
random position onto a random crop of a real texture photo. The box of an object is
exactly the pasted rectangle. Images are JPEG, annotations Pascal VOC XML (one per
image, same stem), plus a ``boxes.csv`` with the same boxes and a ``dataset.json``
describing how the set was made.

Two disjoint splits are predefined, so that one can tune on one and report on the
other: :data:`OBJECTS_A`/:data:`BACKGROUNDS_A` (the default) and
:data:`OBJECTS_B`/:data:`BACKGROUNDS_B`. The same seed and arguments give the same
files byte for byte (with the same OpenCV and scikit-image versions).

scikit-image is needed only here (``pip install scikit-image``); it is imported lazily.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .boxes import Box, write_boxes_csv, write_voc_xml

__all__ = [
    "ObjectSource",
    "OBJECTS",
    "BACKGROUNDS",
    "OBJECTS_A",
    "OBJECTS_B",
    "BACKGROUNDS_A",
    "BACKGROUNDS_B",
    "load_object",
    "load_background",
    "build_dataset",
    "build_split",
    "SPLITS",
]


@dataclasses.dataclass(frozen=True)
class ObjectSource:
    """A crop ``(x0, y0, x1, y1)`` (0-based, exclusive) of the ``skimage.data`` image
    ``image`` (a function name; ``stereo_motorcycle`` means its left view)."""

    image: str
    crop: tuple[int, int, int, int]
    description: str = ""


# Rectangles chosen by inspecting each photo on a 50-px grid.
OBJECTS: dict[str, ObjectSource] = {
    "cat": ObjectSource("chelsea", (30, 0, 400, 300), "Chelsea the tabby cat, head and chest"),
    "coffee_cup": ObjectSource("coffee", (70, 10, 485, 392), "espresso cup with spoon on its saucer"),
    "motorcycle": ObjectSource("stereo_motorcycle", (88, 95, 690, 455), "red motorcycle, whole"),
    "rocket": ObjectSource("rocket", (295, 120, 348, 408), "Falcon 9 on the launch pad"),
    "space_shuttle": ObjectSource("astronaut", (350, 0, 475, 290), "space shuttle model behind the astronaut"),
    "astronaut": ObjectSource("astronaut", (100, 10, 320, 300), "Eileen Collins, head and suit collar"),
    "cameraman": ObjectSource("camera", (0, 60, 340, 330), "photographer with camera on a tripod (grey)"),
    "coin": ObjectSource("coins", (302, 12, 368, 76), "one ancient coin (grey)"),
    "horse": ObjectSource("horse", (18, 8, 392, 312), "horse silhouette"),
}

# Texture photos (whole images, randomly cropped and resized to cover).
BACKGROUNDS: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "hubble_deep_field",
    "immunohistochemistry",
    "text",
    "page",
)

OBJECTS_A: tuple[str, ...] = ("cat", "coffee_cup", "motorcycle", "space_shuttle", "rocket")
BACKGROUNDS_A: tuple[str, ...] = ("brick", "grass", "gravel", "moon")
OBJECTS_B: tuple[str, ...] = ("astronaut", "cameraman", "coin", "horse")
BACKGROUNDS_B: tuple[str, ...] = ("hubble_deep_field", "immunohistochemistry", "text", "page")


def _skimage_data():
    try:
        import skimage.data as data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("building the evaluation set needs scikit-image: pip install scikit-image") from e
    return data


def _rgb(image) -> np.ndarray:
    im = np.asarray(image)
    if im.dtype == bool:
        im = np.where(im, 255, 0).astype(np.uint8)
    elif im.dtype != np.uint8:
        im = np.clip(im * (255.0 if im.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    return np.ascontiguousarray(im[..., :3])


def _load_skimage(name: str) -> np.ndarray:
    data = _skimage_data()
    fn: Callable | None = getattr(data, name, None)
    if fn is None:
        raise ValueError(f"skimage.data has no image {name!r}")
    im = fn()
    if name == "stereo_motorcycle":
        im = im[0]
    return _rgb(im)


def load_object(name: str) -> np.ndarray:
    """The RGB uint8 crop of object ``name`` (a key of :data:`OBJECTS`)."""
    if name not in OBJECTS:
        raise ValueError(f"unknown object {name!r}; known: {', '.join(OBJECTS)}")
    src = OBJECTS[name]
    x0, y0, x1, y1 = src.crop
    return np.ascontiguousarray(_load_skimage(src.image)[y0:y1, x0:x1])


def load_background(name: str) -> np.ndarray:
    """The RGB uint8 texture photo ``name`` (one of :data:`BACKGROUNDS`, or any
    ``skimage.data`` image)."""
    return _load_skimage(name)


# Backgrounds with writing are never mirrored (mirror writing would look fake).
_NO_MIRROR = frozenset({"text", "page"})


def _background_canvas(
    bg: np.ndarray, height: int, width: int, rng: np.random.Generator, mirror: bool = True
) -> np.ndarray:
    """A random crop of ``bg`` scaled (0.6..1.0 of the largest fitting window) to the canvas."""
    bh, bw = bg.shape[:2]
    fit = min(bh / height, bw / width)  # the largest window of the canvas's aspect
    win = fit * rng.uniform(0.6, 1.0)
    wh, ww = max(1, int(round(height * win))), max(1, int(round(width * win)))
    y0 = int(rng.integers(0, bh - wh + 1))
    x0 = int(rng.integers(0, bw - ww + 1))
    crop = bg[y0 : y0 + wh, x0 : x0 + ww]
    if rng.random() < 0.5 and mirror:
        crop = crop[:, ::-1]
    interp = cv2.INTER_AREA if wh > height else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=interp)


def _overlaps(a: Box, b: Box) -> bool:
    return a.xmin < b.xmax and b.xmin < a.xmax and a.ymin < b.ymax and b.ymin < a.ymax


def build_dataset(
    out_dir: str | Path,
    n_images: int,
    seed: int = 0,
    objects: Sequence[str] = OBJECTS_A,
    backgrounds: Sequence[str] = BACKGROUNDS_A,
    image_size: tuple[int, int] = (336, 448),
    scale_range: tuple[float, float] = (0.35, 0.7),
    objects_per_image: tuple[int, int] = (1, 1),
    jpeg_quality: int = 92,
    prefix: str = "img",
) -> list[tuple[Path, Path]]:
    """Write ``n_images`` JPEGs to ``out_dir/images`` and their VOC XML to
    ``out_dir/annotations``; returns ``[(image_path, xml_path), ...]``.

    ``image_size``: ``(height, width)``. Each pasted object is scaled so that its
    longer side is ``scale_range`` times the canvas's shorter side (never larger than
    the canvas), randomly mirrored, and placed uniformly at random; with
    ``objects_per_image=(lo, hi)`` an image gets between ``lo`` and ``hi`` objects
    that do not overlap (fewer if no free place is found). Objects cycle through
    ``objects`` in a shuffled order so every object appears about equally often.
    The same arguments give the same files.
    """
    objects = list(objects)
    backgrounds = list(backgrounds)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if not objects or not backgrounds:
        raise ValueError("need at least one object and one background")
    for o in objects:
        if o not in OBJECTS:
            raise ValueError(f"unknown object {o!r}; known: {', '.join(OBJECTS)}")
    lo_n, hi_n = (int(v) for v in objects_per_image)
    if not 1 <= lo_n <= hi_n:
        raise ValueError(f"objects_per_image must be (lo, hi) with 1 <= lo <= hi, got {objects_per_image}")
    s_lo, s_hi = (float(v) for v in scale_range)
    if not 0 < s_lo <= s_hi:
        raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
    height, width = (int(v) for v in image_size)

    out_dir = Path(out_dir)
    img_dir, ann_dir = out_dir / "images", out_dir / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)

    obj_images = {o: load_object(o) for o in objects}
    bg_images = {b: load_background(b) for b in backgrounds}
    rng = np.random.default_rng(seed)
    obj_cycle: list[str] = []
    written: list[tuple[Path, Path]] = []
    csv_items = []
    manifest_images = []
    digits = max(4, len(str(n_images - 1)))
    for i in range(n_images):
        bg_name = backgrounds[int(rng.integers(len(backgrounds)))]
        canvas = _background_canvas(bg_images[bg_name], height, width, rng, bg_name not in _NO_MIRROR)
        n_obj = int(rng.integers(lo_n, hi_n + 1))
        boxes: list[Box] = []
        for _ in range(n_obj):
            if not obj_cycle:
                obj_cycle = [objects[k] for k in rng.permutation(len(objects))]
            name = obj_cycle.pop()
            crop = obj_images[name]
            ch, cw = crop.shape[:2]
            for _attempt in range(50):
                longer = rng.uniform(s_lo, s_hi) * min(height, width)
                f = min(longer / max(ch, cw), height / ch, width / cw)
                oh, ow = max(1, int(round(ch * f))), max(1, int(round(cw * f)))
                y0 = int(rng.integers(0, height - oh + 1))
                x0 = int(rng.integers(0, width - ow + 1))
                box = Box(float(x0), float(y0), float(x0 + ow), float(y0 + oh), label=name)
                if not any(_overlaps(box, b) for b in boxes):
                    break
            else:
                continue
            flip = rng.random() < 0.5
            interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
            patch = cv2.resize(crop, (ow, oh), interpolation=interp)
            if flip:
                patch = patch[:, ::-1]
            canvas[y0 : y0 + oh, x0 : x0 + ow] = patch
            boxes.append(box)
        stem = f"{prefix}_{i:0{digits}d}"
        img_path = img_dir / f"{stem}.jpg"
        ok = cv2.imwrite(str(img_path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise OSError(f"{img_path}: could not write the JPEG")
        xml_path = write_voc_xml(ann_dir / f"{stem}.xml", img_path.name, width, height, boxes, folder="images")
        written.append((img_path, xml_path))
        csv_items.append((img_path.name, boxes))
        manifest_images.append(
            {"file": img_path.name, "background": bg_name, "objects": [[b.label, *b.as_tuple()] for b in boxes]}
        )
    write_boxes_csv(out_dir / "boxes.csv", csv_items)
    manifest = {
        "seed": seed,
        "n_images": n_images,
        "image_size": [height, width],
        "scale_range": [s_lo, s_hi],
        "objects_per_image": [lo_n, hi_n],
        "objects": {o: dataclasses.asdict(OBJECTS[o]) for o in objects},
        "backgrounds": backgrounds,
        "box_convention": "0-based pixel edges, xmax/ymax exclusive (VOC XML: 1-based inclusive)",
        "images": manifest_images,
    }
    (out_dir / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return written


# The predefined splits: (objects, backgrounds, file-name prefix).
SPLITS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "a": (OBJECTS_A, BACKGROUNDS_A, "img"),
    "b": (OBJECTS_B, BACKGROUNDS_B, "heldout"),
}


def build_split(out_dir: str | Path, n_images: int = 24, seed: int = 0, split: str = "a") -> int:
    """Build one of the predefined splits in ``out_dir``; returns the number of images written.

    ``split="a"``: the project's set (:data:`OBJECTS_A` on :data:`BACKGROUNDS_A`, files
    ``img_0000.jpg``...); ``"b"``: the held-out set, whose objects *and* backgrounds
    are all different (:data:`OBJECTS_B` on :data:`BACKGROUNDS_B`, files
    ``heldout_0000.jpg``...), so a threshold or method tuned on ``a`` can be checked on
    ``b``. Images go to ``out_dir/images``, Pascal VOC XML to ``out_dir/annotations``,
    plus ``boxes.csv`` and ``dataset.json`` (which records the split).
    """
    key = str(split).lower()
    if key not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'a' (the project's set) or 'b' (held out)")
    objects, backgrounds, prefix = SPLITS[key]
    written = build_dataset(out_dir, n_images, seed=seed, objects=objects, backgrounds=backgrounds, prefix=prefix)
    manifest_path = Path(out_dir) / "dataset.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest = {"split": key, **manifest}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return len(written)
