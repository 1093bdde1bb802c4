"""Ground-truth bounding boxes: reading Pascal VOC XML and CSV, matching them to images.

Coordinate convention (used by every module of :mod:`onnx_explain.evaluation`)
------------------------------------------------------------------------------
A :class:`Box` is given in **original-image pixels, 0-based, with pixel-edge
coordinates and an exclusive maximum**: ``Box(xmin, ymin, xmax, ymax)`` covers the
pixel columns ``xmin .. xmax-1`` and rows ``ymin .. ymax-1``; its width is
``xmax - xmin``. The whole of a ``W x H`` image is ``Box(0, 0, W, H)``. This is the
convention of numpy slicing (``image[ymin:ymax, xmin:xmax]``) and of OpenCV's
``(x, y, w, h)`` rectangles (``xmax = x + w``).

* **Pascal VOC XML** stores 1-based *inclusive* pixel indices (the full image is
  ``1, 1, W, H``). Reading converts ``xmin_voc - 1 -> xmin`` and ``xmax_voc -> xmax``
  (same for y); :func:`write_voc_xml` converts back, so a round trip is exact.
* **CSV** files (``file,xmin,ymin,xmax,ymax[,class]``) are read in this package's own
  convention (0-based, exclusive maximum) unless ``one_based_inclusive=True``.

Coordinates may be fractional (some VOC tools write ``273.5``); metrics work with
continuous areas (IoU) or with pixel centres (a pixel ``(row, col)`` is inside a box
when its centre ``(col + 0.5, row + 0.5)`` is, see :func:`Box.pixel_ranges`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Iterable, Sequence
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler
from xml.sax.saxutils import escape

__all__ = [
    "AnnotationError",
    "Box",
    "ImageAnnotation",
    "read_voc_xml",
    "read_voc_dir",
    "read_boxes_csv",
    "load_annotations",
    "match_annotations",
    "write_voc_xml",
    "write_boxes_csv",
]


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file (and line where known)."""


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in original-image pixels: 0-based, ``xmax``/``ymax`` exclusive."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: str | None = None
    difficult: bool = False

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    def pixel_ranges(self, height: int, width: int) -> tuple[slice, slice]:
        """``(rows, cols)`` slices of the pixels whose centres lie inside the box,
        clipped to a ``height x width`` image. For integer boxes this is exactly
        ``[ymin:ymax, xmin:xmax]``."""
        c0 = max(0, math.ceil(self.xmin - 0.5))
        c1 = min(width, math.floor(self.xmax - 0.5) + 1)
        r0 = max(0, math.ceil(self.ymin - 0.5))
        r1 = min(height, math.floor(self.ymax - 0.5) + 1)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def to_voc(self) -> tuple[float, float, float, float]:
        """The box as Pascal VOC 1-based inclusive ``(xmin, ymin, xmax, ymax)``."""
        return (self.xmin + 1, self.ymin + 1, self.xmax, self.ymax)

    @classmethod
    def from_voc(cls, xmin, ymin, xmax, ymax, label=None, difficult=False) -> "Box":
        """A box from Pascal VOC 1-based inclusive coordinates."""
        return cls(float(xmin) - 1, float(ymin) - 1, float(xmax), float(ymax), label, difficult)


@dataclasses.dataclass
class ImageAnnotation:
    """The boxes of one image, as read from an annotation file.

    ``filename`` is the image file name the annotation names (VOC ``<filename>``, CSV
    ``file`` column); ``source`` the annotation file it came from; ``width``/``height``
    the image size when the file states it (VOC ``<size>``), else ``None``.
    """

    filename: str
    boxes: list[Box]
    source: str
    width: int | None = None
    height: int | None = None


# --------------------------------------------------------------------------- VOC XML


class _Node:
    __slots__ = ("tag", "attrs", "children", "parts", "line")

    def __init__(self, tag: str, attrs: dict, line: int):
        self.tag = tag
        self.attrs = attrs
        self.children: list[_Node] = []
        self.parts: list[str] = []  # text pieces, joined once: linear however many there are
        self.line = line

    @property
    def text(self) -> str:
        if len(self.parts) != 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0]

    def find(self, tag: str) -> "_Node | None":
        for c in self.children:
            if c.tag == tag:
                return c
        return None

    def findall(self, tag: str) -> list["_Node"]:
        return [c for c in self.children if c.tag == tag]


# An annotation is a few kilobytes; anything far larger is not one (and would be held whole).
MAX_XML_BYTES = 16 << 20


class _Builder(ContentHandler):
    """Elements with their line numbers (ElementTree drops them)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[_Node] = []
        self.root: list[_Node] = []
        self.locator = None

    def setDocumentLocator(self, locator) -> None:
        self.locator = locator

    def startElement(self, name, attrs) -> None:
        node = _Node(name, dict(attrs), self.locator.getLineNumber() if self.locator else 0)
        (self.stack[-1].children if self.stack else self.root).append(node)
        self.stack.append(node)

    def endElement(self, name) -> None:
        self.stack.pop()

    def characters(self, content) -> None:
        if self.stack:
            self.stack[-1].parts.append(content)


def _parse_xml(path: Path) -> _Node:
    """Parse XML with a hardened parser (defusedxml: no entity declarations, no external
    entities or DTDs fetched), keeping the line number of every element."""
    import defusedxml
    import defusedxml.sax

    try:
        size = path.stat().st_size
        if size > MAX_XML_BYTES:
            raise AnnotationError(f"{path}: {size} bytes, too large for an annotation (limit {MAX_XML_BYTES})")
        data = path.read_bytes()
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read: {e.strerror or e}") from None
    builder = _Builder()
    try:
        defusedxml.sax.parseString(data, builder, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except SAXParseException as e:
        raise AnnotationError(f"{path}:{e.getLineNumber()}: not well-formed XML: {e.getMessage()}") from None
    except defusedxml.DefusedXmlException as e:
        raise AnnotationError(f"{path}: refused: the XML declares entities or external resources ({type(e).__name__}); "
                              "an annotation needs neither") from None
    if not builder.root:
        raise AnnotationError(f"{path}: empty XML document")
    return builder.root[0]


def _number(node: _Node | None, parent: _Node, name: str, path: Path) -> float:
    if node is None:
        raise AnnotationError(f"{path}:{parent.line}: <{parent.tag}> has no <{name}>")
    text = node.text.strip()
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(f"{path}:{node.line}: <{name}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{path}:{node.line}: <{name}> is not finite: {text!r}")
    return value


def _check_box(box: Box, where: str) -> Box:
    if box.xmax <= box.xmin or box.ymax <= box.ymin:
        raise AnnotationError(
            f"{where}: empty or reversed box (xmin={box.xmin:g}, ymin={box.ymin:g}, "
            f"xmax={box.xmax:g}, ymax={box.ymax:g} in 0-based exclusive pixels)"
        )
    if box.xmin < -1 or box.ymin < -1:
        raise AnnotationError(
            f"{where}: box starts before the image (xmin={box.xmin:g}, ymin={box.ymin:g} "
            "in 0-based pixels; VOC coordinates start at 1)"
        )
    if box.xmin < 0 or box.ymin < 0:
        # A VOC file written 0-based by mistake (xmin=0) lands at -1: clip, don't fail.
        box = dataclasses.replace(box, xmin=max(0.0, box.xmin), ymin=max(0.0, box.ymin))
    return box


def read_voc_xml(path: str | Path) -> ImageAnnotation:
    """Read one Pascal VOC annotation file.

    Every ``<object>`` with a ``<bndbox>`` gives a :class:`Box` (label from ``<name>``,
    ``<difficult>`` kept); coordinates are converted from VOC 1-based inclusive to
    0-based exclusive. The image is named by ``<filename>`` (or, when absent, the XML
    file's stem). An image with no object is allowed and yields no boxes.
    """
    path = Path(path)
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise AnnotationError(f"{path}:{root.line}: root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
    fn = root.find("filename")
    filename = fn.text.strip() if fn is not None and fn.text.strip() else path.stem
    width = height = None
    size = root.find("size")
    if size is not None:
        w, h = size.find("width"), size.find("height")
        if w is not None and h is not None:
            width = int(_number(w, size, "width", path))
            height = int(_number(h, size, "height", path))
    boxes = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        if bb is None:
            raise AnnotationError(f"{path}:{obj.line}: <object> has no <bndbox>")
        name = obj.find("name")
        label = name.text.strip() if name is not None and name.text.strip() else None
        diff = obj.find("difficult")
        difficult = diff is not None and diff.text.strip() not in ("", "0")
        coords = [_number(bb.find(k), bb, k, path) for k in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(_check_box(Box.from_voc(*coords, label=label, difficult=difficult), f"{path}:{bb.line}"))
    return ImageAnnotation(filename=filename, boxes=boxes, source=str(path), width=width, height=height)


def read_voc_dir(directory: str | Path) -> list[ImageAnnotation]:
    """Read every ``*.xml`` file of a directory (not recursive), sorted by name."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise AnnotationError(f"{directory}: no .xml annotation files in this directory")
    return [read_voc_xml(p) for p in files]


# --------------------------------------------------------------------------- CSV

_CSV_HEADER = ("file", "xmin", "ymin", "xmax", "ymax")


def read_boxes_csv(path: str | Path, one_based_inclusive: bool = False) -> list[ImageAnnotation]:
    """Read ``file,xmin,ymin,xmax,ymax[,class]`` rows (header optional; several rows per
    image; blank lines and lines starting with ``#`` ignored).

    Coordinates are 0-based with exclusive maximum (this package's convention) unless
    ``one_based_inclusive`` (the VOC convention). Images keep the order of their first row.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not a UTF-8 text file") from None
    groups: dict[str, list[Box]] = {}
    first_data = True
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if first_data:
            first_data = False
            if tuple(c.lower() for c in cells[:5]) == _CSV_HEADER:
                continue
        if len(cells) not in (5, 6):
            raise AnnotationError(
                f"{path}:{lineno}: expected 5 or 6 columns (file,xmin,ymin,xmax,ymax[,class]), got {len(cells)}"
            )
        if not cells[0]:
            raise AnnotationError(f"{path}:{lineno}: empty file name")
        coords = []
        for name, cell in zip(_CSV_HEADER[1:], cells[1:5]):
            try:
                v = float(cell)
            except ValueError:
                raise AnnotationError(f"{path}:{lineno}: {name} is not a number: {cell!r}") from None
            if not math.isfinite(v):
                raise AnnotationError(f"{path}:{lineno}: {name} is not finite: {cell!r}")
            coords.append(v)
        label = cells[5] if len(cells) == 6 and cells[5] else None
        box = Box.from_voc(*coords, label=label) if one_based_inclusive else Box(*coords, label=label)
        groups.setdefault(cells[0], []).append(_check_box(box, f"{path}:{lineno}"))
    if not groups:
        raise AnnotationError(f"{path}: no boxes in this CSV file")
    return [ImageAnnotation(filename=f, boxes=b, source=str(path)) for f, b in groups.items()]


def load_annotations(source: str | Path, one_based_inclusive_csv: bool = False) -> list[ImageAnnotation]:
    """Annotations from a directory of VOC XML files, one VOC ``.xml`` file, or a ``.csv``."""
    source = Path(source)
    if source.is_dir():
        return read_voc_dir(source)
    if not source.exists():
        raise AnnotationError(f"{source}: no such file or directory")
    suffix = source.suffix.lower()
    if suffix == ".xml":
        return [read_voc_xml(source)]
    if suffix in (".csv", ".txt"):
        return read_boxes_csv(source, one_based_inclusive=one_based_inclusive_csv)
    raise AnnotationError(f"{source}: unknown annotation format (expected a directory of VOC .xml, a .xml or a .csv)")


def match_annotations(
    image_paths: Iterable[str | Path],
    annotations: Sequence[ImageAnnotation],
    missing: str = "error",
) -> list[tuple[Path, list[Box]]]:
    """Pair every image with its boxes.

    An image matches an annotation whose file name (VOC ``<filename>`` / CSV ``file``,
    compared by base name) equals the image's base name; failing that, one whose file
    name stem or annotation-file stem equals the image's stem (``cat_01.jpg`` matches
    ``cat_01.xml`` or ``<filename>cat_01.png</filename>``). Two annotations claiming
    the same image are an error. ``missing``: ``"error"`` (default) raises for an image
    with no annotation, ``"skip"`` leaves it out, ``"empty"`` keeps it with no boxes.
    """
    if missing not in ("error", "skip", "empty"):
        raise ValueError(f"missing must be 'error', 'skip' or 'empty', not {missing!r}")
    by_name: dict[str, ImageAnnotation] = {}
    by_stem: dict[str, list[ImageAnnotation]] = {}
    for ann in annotations:
        name = Path(ann.filename.replace("\\", "/")).name
        if name in by_name and by_name[name] is not ann:
            raise AnnotationError(f"{ann.source}: image {name!r} is also annotated in {by_name[name].source}")
        by_name[name] = ann
        stems = {Path(name).stem}
        if ann.source.lower().endswith(".xml"):
            stems.add(Path(ann.source).stem)
        for s in stems:
            by_stem.setdefault(s, []).append(ann)
    out = []
    for p in image_paths:
        p = Path(p)
        ann = by_name.get(p.name)
        if ann is None:
            cands = by_stem.get(p.stem, [])
            if len(cands) > 1:
                srcs = ", ".join(sorted({c.source + ":" + c.filename for c in cands}))
                raise AnnotationError(f"{p}: several annotations match this image's name: {srcs}")
            ann = cands[0] if cands else None
        if ann is None:
            if missing == "error":
                raise AnnotationError(f"{p}: no annotation found for this image (matched by file name, then stem)")
            if missing == "skip":
                continue
            out.append((p, []))
        else:
            out.append((p, list(ann.boxes)))
    return out


# --------------------------------------------------------------------------- writing


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_voc_xml(
    path: str | Path,
    filename: str,
    width: int,
    height: int,
    boxes: Sequence[Box],
    depth: int = 3,
    folder: str = "",
) -> Path:
    """Write a Pascal VOC annotation (boxes converted to 1-based inclusive)."""
    path = Path(path)
    lines = [
        "<annotation>",
        f"\t<folder>{escape(folder)}</folder>",
        f"\t<filename>{escape(filename)}</filename>",
        "\t<size>",
        f"\t\t<width>{int(width)}</width>",
        f"\t\t<height>{int(height)}</height>",
        f"\t\t<depth>{int(depth)}</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for b in boxes:
        x0, y0, x1, y1 = b.to_voc()
        lines += [
            "\t<object>",
            f"\t\t<name>{escape(b.label or 'object')}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            f"\t\t<difficult>{int(bool(b.difficult))}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{_fmt(x0)}</xmin>",
            f"\t\t\t<ymin>{_fmt(y0)}</ymin>",
            f"\t\t\t<xmax>{_fmt(x1)}</xmax>",
            f"\t\t\t<ymax>{_fmt(y1)}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_boxes_csv(path: str | Path, items: Iterable[tuple[str, Sequence[Box]]]) -> Path:
    """Write ``file,xmin,ymin,xmax,ymax,class`` rows (0-based, exclusive maximum)."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(_CSV_HEADER) + ["class"])
        for name, boxes in items:
            for b in boxes:
                w.writerow([name, _fmt(b.xmin), _fmt(b.ymin), _fmt(b.xmax), _fmt(b.ymax), b.label or ""])
    return path
