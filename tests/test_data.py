"""Tests for nin_bench.data.datasets: discovery, decoding, the checksum-keyed cache, and the error messages.

Real data comes from env NIN_BENCH_DATA (CI: ../shared/data); tests that need it skip when it is unset. The full
CIFAR-10 JPEG set is decoded once per session (about 20-40 s on 2 cores) into a session-wide temporary cache.
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nin_bench.data import datasets as data
from nin_bench.data import decoders as data_sources
from nin_bench.data.datasets import (
    CIFAR10_CLASSES,
    DataError,
    channel_stats,
    data_root,
    load_dataset,
)

# Checksums of the files in ../shared/data (its SHA256SUMS); fashion's is the sha256 of the four per-file hex
# digests concatenated in the order train-images, train-labels, t10k-images, t10k-labels.
FASHION_SHA256 = "f0616db38b9c48cb7686a79a32adc10500295453ef551cb1b34cc03d5010c93e"
CIFAR_JPEG_SHA256 = "0bfcb68717a0ecb0d51ed61034906a773d48d424d94b766a46d7d1c55702a4d9"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    env = os.environ.get("NIN_BENCH_DATA")
    if not env:
        pytest.skip("NIN_BENCH_DATA is unset: point it at the data sets folder (CI sets ../shared/data)")
    return Path(env)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nin_bench_cache")


@pytest.fixture(scope="session")
def fashion(data_dir: Path, cache_dir: Path) -> data.Dataset:
    return load_dataset("fashion_mnist", root=data_dir, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def cifar(data_dir: Path, cache_dir: Path) -> data.Dataset:
    return load_dataset("cifar10", root=data_dir, cache_dir=cache_dir)


def _fail(*args, **kwargs):
    raise AssertionError("the decoder ran although the cache should have been used")


# ------------------------------------------------------------------------------------------------- real data
def test_fashion_mnist_official_idx(fashion: data.Dataset, data_dir: Path) -> None:
    assert fashion.name == "fashion_mnist"
    assert fashion.source == "Fashion-MNIST (official IDX)"
    assert fashion.source_sha256 == FASHION_SHA256
    assert Path(fashion.source_path) == data_dir / "fashion-mnist"
    assert fashion.train_x.shape == (60000, 1, 28, 28) and fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.train_x.dtype == torch.uint8 and fashion.train_y.dtype == torch.int64
    assert torch.bincount(fashion.train_y).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_y).tolist() == [1000] * 10
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"
    # IDX is lossless: the pixel sum and the first labels pin the exact content and order.
    assert int(fashion.train_x.sum()) == 3431114169
    assert fashion.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


def test_fashion_channel_stats(fashion: data.Dataset) -> None:
    mean, std = channel_stats(fashion.train_x)
    assert mean == pytest.approx((0.2860406,), abs=1e-7)
    assert std == pytest.approx((0.3530242,), abs=1e-7)


def test_cifar10_jpeg_tarball(cifar: data.Dataset) -> None:
    assert cifar.name == "cifar10"
    assert cifar.source == "CIFAR-10 (JPEG q75 copy, cifar10-jpeg.tar.gz)"
    assert cifar.source_sha256 == CIFAR_JPEG_SHA256
    assert cifar.train_x.shape == (50000, 3, 32, 32) and cifar.test_x.shape == (10000, 3, 32, 32)
    assert cifar.train_x.dtype == torch.uint8 and cifar.test_y.dtype == torch.int64
    assert torch.bincount(cifar.train_y).tolist() == [5000] * 10
    assert torch.bincount(cifar.test_y).tolist() == [1000] * 10
    assert cifar.classes == CIFAR10_CLASSES == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                "horse", "ship", "truck"]
    # Class-interleaved order: the last-5,000 validation split holds every class equally.
    assert cifar.train_y[:10].tolist() == list(range(10))
    assert torch.bincount(cifar.train_y[-5000:]).tolist() == [500] * 10
    # The decoded pixels, pinned: a change of JPEG decoder (or of its settings) must give the same sums.
    assert int(cifar.train_x.sum()) == 18537712937 and int(cifar.test_x.sum()) == 3732740007


def test_second_load_uses_cache(cifar: data.Dataset, fashion: data.Dataset, data_dir: Path, cache_dir: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert (cache_dir / f"cifar10-v{data.CACHE_VERSION}-{CIFAR_JPEG_SHA256}.pt").is_file()
    assert (cache_dir / f"fashion_mnist-v{data.CACHE_VERSION}-{FASHION_SHA256}.pt").is_file()
    for name in ("decode_tree", "decode_idx_set", "check_gzip", "tar_tree_entries"):
        monkeypatch.setattr(data_sources, name, _fail)
    again = load_dataset("cifar10", root=data_dir, cache_dir=cache_dir)
    assert torch.equal(again.train_x, cifar.train_x) and torch.equal(again.test_y, cifar.test_y)
    assert again.source == cifar.source and again.source_sha256 == cifar.source_sha256
    assert torch.equal(load_dataset("fashion_mnist", root=data_dir, cache_dir=cache_dir).train_x, fashion.train_x)


def test_cache_dir_from_env(fashion: data.Dataset, data_dir: Path, cache_dir: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIN_BENCH_CACHE", str(cache_dir))
    monkeypatch.setattr(data_sources, "decode_idx_set", _fail)
    assert torch.equal(load_dataset("fashion_mnist", root=data_dir).test_x, fashion.test_x)


def test_fashion_plain_idx_in_torchvision_layout(fashion: data.Dataset, data_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in data.FASHION_FILES:
        (raw / stem).write_bytes(gzip.decompress((data_dir / "fashion-mnist" / f"{stem}.gz").read_bytes()))
    plain = load_dataset("fashion_mnist", root=tmp_path, cache_dir=tmp_path / "cache")
    assert Path(plain.source_path) == raw and plain.source_sha256 != FASHION_SHA256
    assert torch.equal(plain.train_x, fashion.train_x) and torch.equal(plain.test_y, fashion.test_y)


# ---------------------------------------------------------------------------------------------------- errors
def test_root_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion_mnist", root=tmp_path / "nope", cache_dir=tmp_path)


def test_missing_data_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "debian")
    for name, looked_for in (("cifar10", "cifar-10-batches-py"), ("fashion_mnist", "train-images-idx3-ubyte")):
        with pytest.raises(DataError) as info:
            load_dataset(name, root=tmp_path, cache_dir=tmp_path)
        msg = str(info.value)
        assert looked_for in msg and str(tmp_path) in msg
        assert "NIN_BENCH_DATA" in msg and "data.download: true" in msg


def test_missing_cifar_names_every_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path)
    for part in ("cifar-10-batches-py", "cifar10-jpeg.tar.gz", "CIFAR-10-images", "train/<class>"):
        assert part in str(info.value)


def test_truncated_tarball(data_dir: Path, tmp_path: Path) -> None:
    full = (data_dir / "cifar10-jpeg.tar.gz").read_bytes()
    cut = tmp_path / "cifar10-jpeg.tar.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path)
    assert str(cut) in str(info.value)


def test_not_a_gzip(tmp_path: Path) -> None:
    bad = tmp_path / "cifar10-jpeg.tar.gz"
    bad.write_bytes(b"this is not a gzip file" * 100)
    with pytest.raises(DataError, match="corrupt") as info:
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool) -> None:
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "debian")
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for stem in data.FASHION_FILES[:3]:  # intact files: links to the real ones
        (folder / f"{stem}.gz").symlink_to(data_dir / "fashion-mnist" / f"{stem}.gz")
    stem = data.FASHION_FILES[3]
    raw = gzip.decompress((data_dir / "fashion-mnist" / f"{stem}.gz").read_bytes())[:-10]  # ten labels short
    (folder / (f"{stem}.gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("fashion_mnist", root=tmp_path, cache_dir=tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(info.value)


def test_bad_gzip_idx(tmp_path: Path) -> None:
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    whole = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x03\xe8" + bytes(range(250)) * 4)
    bad.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="not a readable gzip") as info:
        data_sources.read_idx(bad)
    assert str(bad) in str(info.value)


def test_bad_idx_magic(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an IDX ubyte file"):
        data_sources.read_idx(bad)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="imagefolder"):
        load_dataset("mnist")


# --------------------------------------------------------------------------------------- synthetic sources
def _png(path: Path, value: int, size: tuple[int, int] = (6, 4), mode: str = "RGB") -> None:
    """Write a uniform PNG (lossless, so pixel values can be asserted) of `size` = (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value,) * len(mode) if mode != "L" else value).save(path)


def _tiny_tree(root: Path, mode: str = "RGB") -> None:
    for split, cls, names in (("train", "dog", "ab"), ("train", "cat", "abc"), ("test", "cat", "a"),
                              ("test", "dog", "a")):
        for i, n in enumerate(names):
            _png(root / split / cls / f"{n}.png", 10 * i + (100 if cls == "dog" else 0), mode=mode)


def test_imagefolder(tmp_path: Path) -> None:
    _tiny_tree(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    ds = load_dataset("imagefolder", path=tmp_path / "imgs", cache_dir=tmp_path / "cache")
    assert ds.classes == ["cat", "dog"] and ds.name == "imagefolder"
    assert ds.source == f"imagefolder {tmp_path / 'imgs'}" and len(ds.source_sha256) == 64
    assert ds.train_x.shape == (5, 3, 4, 6) and ds.test_x.shape == (2, 3, 4, 6)
    # interleaved: cat/a, dog/a, cat/b, dog/b, cat/c
    assert ds.train_y.tolist() == [0, 1, 0, 1, 0]
    assert ds.train_x[:, 0, 0, 0].tolist() == [0, 100, 10, 110, 20]
    assert ds.test_y.tolist() == [0, 1]


def test_imagefolder_grey_is_one_channel(tmp_path: Path) -> None:
    _tiny_tree(tmp_path, mode="L")
    ds = load_dataset("imagefolder", path=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.train_x.shape == (5, 1, 4, 6)


def test_imagefolder_odd_size_names_file(tmp_path: Path) -> None:
    _tiny_tree(tmp_path)
    _png(tmp_path / "train" / "dog" / "z.png", 7, size=(5, 5))
    with pytest.raises(DataError, match="all images must have one size") as info:
        load_dataset("imagefolder", path=tmp_path, cache_dir=tmp_path / "cache")
    assert "train/dog/z.png" in str(info.value)


def test_imagefolder_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs data.path"):
        load_dataset("imagefolder")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("imagefolder", path=tmp_path / "nope")


def test_unreadable_cache_is_a_miss(tmp_path: Path) -> None:
    _tiny_tree(tmp_path / "imgs")
    first = load_dataset("imagefolder", path=tmp_path / "imgs", cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(b"torn")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        again = load_dataset("imagefolder", path=tmp_path / "imgs", cache_dir=tmp_path / "cache")
    assert torch.equal(again.train_x, first.train_x)


def _write_batches(folder: Path, per_batch: int = 4) -> None:
    """Tiny stand-ins for the official pickles: image k of batch b has every pixel = 10*b + k."""
    folder.mkdir(parents=True)
    for b, fname in enumerate(data_sources.CIFAR_BATCH_FILES):
        x = np.repeat(np.arange(per_batch, dtype=np.uint8)[:, None] + 10 * b, 3072, axis=1)
        with open(folder / fname, "wb") as f:
            pickle.dump({b"data": x, b"labels": list(range(per_batch))}, f)


def test_cifar_official_batches_preferred(data_dir: Path, tmp_path: Path) -> None:
    _write_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar10-jpeg.tar.gz").symlink_to(data_dir / "cifar10-jpeg.tar.gz")  # present, but ranked lower
    ds = load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.source == "CIFAR-10 (official python batches)"
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x[:, 0, 0, 0].tolist() == [10 * b + k for b in range(5) for k in range(4)]
    assert ds.test_x[:, 2, 31, 31].tolist() == [50, 51, 52, 53]


def test_cifar_batches_incomplete_or_corrupt(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="incomplete.*test_batch"):
        load_dataset("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------- helpers
def test_data_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIN_BENCH_DATA", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("NIN_BENCH_DATA")
    assert data_root(None) == Path("~/.cache/nin_bench/data").expanduser()


def test_channel_stats_exact() -> None:
    x = torch.tensor([0, 255, 0, 255, 51, 51, 51, 51], dtype=torch.uint8).reshape(1, 2, 2, 2)
    mean, std = channel_stats(x)
    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 0.0))
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(x.float())
