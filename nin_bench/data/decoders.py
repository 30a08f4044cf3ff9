"""Decoders for the on-disk data formats: IDX (Fashion-MNIST), CIFAR-10 python batches, class-per-folder image trees
(a folder or a .tar.gz of one, read straight from the tar stream).

Every decoder returns a dict of numpy arrays `train_x, train_y, test_x, test_y` (uint8 [N,C,H,W], int64 [N]) and
turns any format error into `DataError` naming the file: users see one message, never a traceback from gzip,
tarfile, pickle or PIL. Discovery, hashing and caching live in `nin_bench.data.datasets`.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from nin_bench.errors import UserError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLITS = ("train", "test")
# Everything a truncated/corrupt gzip, tar or image can raise; caught at the file boundary and re-raised as DataError.
_FORMAT_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError, UnidentifiedImageError, SyntaxError, ValueError)

Arrays = dict[str, np.ndarray]
# One image of a tree: (split, class folder, file name, function returning the file's bytes).
TreeEntry = tuple[str, str, str, Callable[[], bytes]]


class DataError(UserError):
    """Missing or corrupt data; the message says what was looked for, where, and how to get it."""


# ----------------------------------------------------------------------------------------------------------- IDX
def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (plain or .gz) of unsigned bytes, checking its magic number and dimensions.

    Args:
        path: an IDX file such as `train-images-idx3-ubyte.gz`.

    Returns:
        uint8 array with the file's dimensions (e.g. [60000, 28, 28]).

    Raises:
        DataError: bad gzip, wrong magic number, or fewer bytes than the header promises (a truncated file).
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc}); the copy is corrupt or truncated") from None
    # Magic: two zero bytes, type code 0x08 (unsigned byte), number of dimensions.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise DataError(f"{path}: not an IDX ubyte file (magic {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(dims))
    if len(raw) - header != need:
        why = "truncated" if len(raw) - header < need else "extra bytes: corrupt"
        raise DataError(f"{path}: IDX dims {dims} need {need} bytes of data, found {len(raw) - header} ({why})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def decode_idx_set(files: tuple[Path, Path, Path, Path]) -> Arrays:
    """Decode Fashion-MNIST's four IDX files.

    Args:
        files: train images, train labels, test images, test labels (in that order).

    Returns:
        The four arrays; images get a channel axis ([N,1,28,28]).
    """
    out: Arrays = {}
    for key, path in zip(("train_x", "train_y", "test_x", "test_y"), files):
        arr = read_idx(path)
        out[key] = arr[:, None] if key.endswith("_x") else arr.astype(np.int64)
    for split in SPLITS:
        if len(out[f"{split}_x"]) != len(out[f"{split}_y"]) or out[f"{split}_x"].ndim != 4:
            raise DataError(f"{files[0].parent}: {split} images and labels do not match "
                            f"({out[f'{split}_x'].shape} vs {out[f'{split}_y'].shape})")
    return out


# ------------------------------------------------------------------------------------------- CIFAR python batches
CIFAR_BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def decode_cifar_batches(folder: Path) -> Arrays:
    """Decode torchvision's `cifar-10-batches-py` (the official python pickles, official order).

    Args:
        folder: the `cifar-10-batches-py` folder.

    Returns:
        train [50000,3,32,32] from data_batch_1..5, test [10000,3,32,32] from test_batch.
    """
    parts: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for fname in CIFAR_BATCH_FILES:
        split = "test" if fname == "test_batch" else "train"
        path = folder / fname
        try:
            # The official format is a pickle (torchvision reads it the same way); only load trusted copies.
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
        parts[f"{split}_x"].append(x)
        parts[f"{split}_y"].append(y)
    return {k: np.concatenate(v) for k, v in parts.items()}


# ------------------------------------------------------------------------------------------------ image trees
def tree_entry_key(relpath: str) -> tuple[str, str, str] | None:
    """Split `.../train/<class>/<file>` into (split, class, file); None for anything else (README, hidden files).

    Plain string ops, not pathlib: this runs once per image (60,000 times for CIFAR-10).

    Args:
        relpath: a POSIX path inside the tree or the archive.

    Returns:
        (split, class folder, file name) or None.
    """
    parts = relpath.split("/")
    if len(parts) < 3 or parts[-3] not in SPLITS or parts[-2].startswith(".") or parts[-1].startswith("."):
        return None
    suffix = parts[-1][parts[-1].rfind("."):].lower() if "." in parts[-1] else ""
    return (parts[-3], parts[-2], parts[-1]) if suffix in IMAGE_SUFFIXES else None


def dir_tree_entries(root: Path) -> list[tuple[Path, TreeEntry]]:
    """List the images of a folder holding `train/<class>/*` and `test/<class>/*`, sorted by relative path.

    Args:
        root: the tree's top folder.

    Returns:
        (file path, tree entry) pairs; the sorted order is the hashing order.
    """
    out = []
    for split in SPLITS:
        for path in sorted((root / split).glob("*/*")):
            key = tree_entry_key(path.relative_to(root).as_posix())
            if key is not None and path.is_file():
                out.append((path, (*key, path.read_bytes)))
    return out


def check_gzip(path: Path) -> None:
    """Decompress a .gz end to end, discarding the output, to catch truncation and corruption early.

    It costs well under a second, against tens of seconds of image decoding that a truncated archive would
    otherwise waste before its end is reached.

    Args:
        path: the gzip file.

    Raises:
        DataError: not gzip, truncated, or a bad CRC.
    """
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
                        f"copy it again (check it with sha256sum)") from None


def tar_tree_entries(path: Path) -> Iterator[TreeEntry]:
    """Stream the images of a `.tar.gz` holding a class-per-folder tree, without extracting anything to disk.

    Args:
        path: the archive.

    Yields:
        Tree entries whose bytes were already read from the stream (stream mode cannot seek back).

    Raises:
        DataError: the archive is truncated or not a gzip'd tar.
    """
    try:
        with tarfile.open(path, mode="r|gz") as tar:  # "|": sequential stream, no random access needed
            for member in tar:
                key = tree_entry_key(member.name) if member.isfile() else None
                if key is not None:
                    data = tar.extractfile(member).read()
                    yield (*key, lambda data=data: data)
    except DataError:
        raise
    except _FORMAT_ERRORS as exc:
        raise DataError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
                        f"copy it again (check it with sha256sum)") from None


def _decode_image(data: bytes, mode: str, where: str) -> np.ndarray:
    """Decode one image to a uint8 [C,H,W] array in `mode` ("L" or "RGB")."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            # convert() copies even when the mode already matches: skip it then (most of CIFAR's JPEGs)
            arr = np.asarray(img if img.mode == mode else img.convert(mode), dtype=np.uint8)
    except _FORMAT_ERRORS as exc:
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def image_mode(data: bytes, where: str) -> str:
    """Pick the decode mode from an image: grey stays one channel, everything else becomes RGB."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
    except _FORMAT_ERRORS as exc:
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from None


def decode_tree(entries: Iterable[TreeEntry], classes: list[str], origin: str, mode: str = "RGB") -> Arrays:
    """Decode a class-per-folder tree into arrays, checking that every image has the first image's size.

    Images are ordered class-interleaved (image k of every class, in class order, then image k+1; file names
    sorted within a class) so that any tail of the training set, such as the last-5,000 validation split, holds
    every class in proportion, as CIFAR-10's official (shuffled) order does. A class-sorted order would make that
    tail all one class.

    Args:
        entries: tree entries (split, class, file name, bytes getter).
        classes: class names in label order; a folder not in it is an error.
        origin: the folder or archive, for error messages.
        mode: "L" (one channel) or "RGB".

    Returns:
        train_x/test_x uint8 [N,C,H,W], train_y/test_y int64 [N].
    """
    index = {c: i for i, c in enumerate(classes)}
    found: dict[str, dict[int, list[tuple[str, np.ndarray]]]] = {s: {} for s in SPLITS}
    first: tuple[str, tuple[int, ...]] | None = None
    for split, cls, fname, read in entries:
        where = f"{origin}: {split}/{cls}/{fname}"
        if cls not in index:
            raise DataError(f"{origin}: class folder {split}/{cls} is not one of the expected classes {classes}")
        arr = _decode_image(read(), mode, where)
        if first is None:
            first = (where, arr.shape)
        elif arr.shape != first[1]:
            raise DataError(f"{where} has shape {_shape_str(arr.shape)} but the first image {first[0]} has "
                            f"{_shape_str(first[1])}; all images must have one size (resize them beforehand)")
        found[split].setdefault(index[cls], []).append((fname, arr))
    out: Arrays = {}
    for split in SPLITS:
        if not found[split]:
            raise DataError(f"{origin}: no images found under {split}/<class>/")
        out[f"{split}_x"], out[f"{split}_y"] = _interleave(found[split])
    return out


def _shape_str(chw: tuple[int, ...]) -> str:
    """Say a [C,H,W] shape the way users think of images: HxW with C channels."""
    return f"{chw[1]}x{chw[2]} (HxW) with {chw[0]} channel(s)"


def _interleave(per_class: dict[int, list[tuple[str, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray]:
    """Order images by (rank of the file name within its class, class index); see `decode_tree`."""
    keyed = []
    for label, items in per_class.items():
        items.sort(key=lambda item: item[0])
        keyed.extend((rank, label, arr) for rank, (_, arr) in enumerate(items))
    keyed.sort(key=lambda t: (t[0], t[1]))
    x = np.stack([t[2] for t in keyed])
    y = np.fromiter((t[1] for t in keyed), dtype=np.int64, count=len(keyed))
    return x, y
