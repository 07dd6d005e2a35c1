"""What every reader shares: locating the dataset folder, collecting malformed lines, and
turning ``{file name: captions}`` into checked ``Record`` objects.

Nothing here knows about a particular layout; each reader module imports only this module
(and ``captioning.data.records``), never ``readers/__init__`` or another reader.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from captioning import DatasetError
from captioning.data.records import DataReport, Record

MAX_NAMED = 5   # how many offending names or lines a message lists


def require_dir(root, what: str, dataset: str) -> Path:
    """``dataset.root`` as an existing folder, or a DatasetError that says how to set it."""
    if root is None or str(root) in ("", "None", "???"):
        raise DatasetError(
            f"dataset.root is not set for dataset={dataset}. Point it at the folder with {what}: "
            f"python run.py dataset={dataset} dataset.root=/path/to/{dataset}")
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise DatasetError(
            f"Dataset folder {root} does not exist. Download {dataset} (README.md, Datasets: "
            f"the download pages) and set dataset.root to "
            f"the folder that contains {what}, or put it at {root} (the default dataset.root is "
            f"under paths.data_dir: set that once with CAPTIONING_DATA_DIR or in "
            f"conf/local/default.yaml).")
    return root


def text_encoding(cfg) -> str:
    """``dataset.encoding`` (default utf-8) as the codec to open the captions files with. UTF-8
    is read as utf-8-sig, so a byte-order mark (as Windows editors write it) is accepted."""
    name = str(cfg.get("encoding") or "utf-8")
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        raise DatasetError(
            f"dataset.encoding={name!r} is not a known text encoding. Use e.g. utf-8, "
            f"latin-1, cp1252 or utf-16.") from None
    return "utf-8-sig" if codec in ("utf-8", "utf-8-sig") else name


@contextmanager
def decoding(path: Path, encoding: str) -> Iterator[None]:
    """Turn a UnicodeDecodeError while reading ``path`` into one DatasetError that names the
    file, the line of the first bad byte, and the ``dataset.encoding`` key."""
    try:
        yield
    except UnicodeDecodeError as e:
        where = f"byte 0x{e.object[e.start]:02x}: {e.reason}"
        hint = "e.g. dataset.encoding=latin-1 or dataset.encoding=cp1252"
        try:                  # a stream's error counts from its buffer: find the file position
            raw = Path(path).read_bytes()
            if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                hint = "it starts with a UTF-16 byte-order mark: dataset.encoding=utf-16"
            raw.decode(encoding)
        except UnicodeDecodeError as first:
            line = raw.count(b"\n", 0, first.start) + 1
            where = f"line {line}, byte 0x{raw[first.start]:02x}: {first.reason}"
        except OSError:
            pass
        shown = "utf-8" if encoding == "utf-8-sig" else encoding
        raise DatasetError(
            f"{path} is not valid {shown} text ({where}). Set dataset.encoding to the file's "
            f"encoding ({hint}), or convert the file to UTF-8.") from None


def first_existing(root: Path, candidates: Iterable[str]) -> Path | None:
    """The first of ``root / name`` that exists, or None."""
    for name in candidates:
        if (root / name).exists():
            return root / name
    return None


class Malformed:
    """Collects malformed lines; raises or warns once at the end, per ``on_malformed``."""

    def __init__(self, path: Path, policy: str):
        if policy not in ("error", "skip"):
            raise DatasetError(
                f"dataset.on_malformed must be error or skip. Received: {policy!r}")
        self.path, self.policy, self.lines = path, policy, []

    def add(self, line_no: int, text: str) -> None:
        if self.policy == "error":
            raise DatasetError(
                f"Malformed captions line {self.path}:{line_no}: {text.strip()[:120]!r}. "
                f"Fix the line, or set dataset.on_malformed=skip to drop such lines.")
        self.lines.append(line_no)

    def report(self, report: DataReport) -> None:
        if self.lines:
            report.removed["malformed caption lines"] += len(self.lines)
            shown = ", ".join(str(n) for n in self.lines[:MAX_NAMED])
            more = ", ..." if len(self.lines) > MAX_NAMED else ""
            report.notes.append(
                f"skipped {len(self.lines)} malformed line(s) in {self.path} "
                f"(lines {shown}{more})")


def assemble(
    captions: dict[str, list[str]], image_dir: Path, split_of: dict[str, str] | None,
    on_missing: str, report: DataReport, subdir_of: dict[str, str] | None = None,
) -> list[Record]:
    """Turn {file name: captions} into records, checking every image exists (one listdir per
    folder, not one stat per image: indexing 30k images takes milliseconds)."""
    if on_missing not in ("error", "skip"):
        raise DatasetError(
            f"dataset.on_missing must be error or skip. Received: {on_missing!r}")
    listing: dict[Path, set[str]] = {}

    def exists(folder: Path, name: str) -> bool:
        if folder not in listing:
            listing[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return name in listing[folder]

    records, missing = [], []
    for name, caps in captions.items():
        folder = image_dir / subdir_of[name] if subdir_of and subdir_of.get(name) else image_dir
        if not exists(folder, name):
            missing.append(name)
            continue
        if not caps:
            report.removed["images with no caption"] += 1
            continue
        split = split_of.get(name) if split_of is not None else "train"
        if split is None:
            report.removed["images in no split list"] += 1
            continue
        records.append(Record(id=name, image=str(folder / name), captions=tuple(caps), split=split))
    if missing:
        shown = ", ".join(missing[:MAX_NAMED])
        if on_missing == "error":
            raise DatasetError(
                f"{len(missing)} of {len(captions)} images listed in the captions are missing "
                f"from {image_dir} (first: {shown}). Check dataset.root, or set "
                f"dataset.on_missing=skip to train on the images that are present.")
        report.removed["missing images"] += len(missing)
        report.notes.append(f"skipped {len(missing)} missing image(s), first: {shown}")
    return records


def dedupe(captions: dict[str, list[str]], report: DataReport) -> dict[str, list[str]]:
    """Drop repeated captions of an image (keeping order), counting them in ``report``."""
    out = {}
    for name, caps in captions.items():
        unique = list(dict.fromkeys(caps))
        report.removed["duplicate caption rows"] += len(caps) - len(unique)
        out[name] = unique
    return out
