"""Encoded rows for training and evaluation, in memory or spilled to an unlinked file, read in blocks.

The seam between a partner's data path and every training loop (plain SGD in
``models/train.py``, DP-SGD in ``models/dp_train.py``): a :class:`Rows` object holds the
encoded features (float32, shape ``(n_rows, width)``) and labels (float32), and hands
out contiguous blocks (:meth:`Rows.read`) or any rows by index (:meth:`Rows.take`, for
Poisson sampling). Two implementations:

* :class:`ArrayRows`: numpy arrays already in memory (small data, tests, baselines);
* :class:`SpillRows`: blocks appended to an anonymous temporary file (``O_TMPFILE``/unlinked,
  mode 0600, in the partner's own work directory) and read back with ``pread``, so a
  process holds one block at a time whatever the row count, and nothing is left on disk
  when the process ends.

:func:`epoch_order` fixes the order of one epoch from a torch generator: up to
``block_rows`` rows it is one ``randperm`` over all rows (exactly the order the loop used
before there were blocks); beyond, a permutation of the blocks and one within each
block, so only one block is read at a time. The order depends only on the row count,
the block size and the generator, never on where the rows live, so the in-memory and
the spilled paths train identically (``tests/models/test_scale_streaming.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["BLOCK_ROWS", "ArrayRows", "Rows", "SpillRows", "epoch_order"]

#: Rows read at once (65,536 rows × 50 float32 features ≈ 13 MB).
BLOCK_ROWS = 65_536


class Rows(Protocol):
    """Encoded rows a training or evaluation loop reads."""

    @property
    def n_rows(self) -> int: ...

    @property
    def width(self) -> int: ...

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of rows ``lo:hi`` (float32 copies the caller owns)."""
        ...

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the rows at ``index``, in that order."""
        ...


class ArrayRows:
    """Rows held in memory as numpy arrays (no copy when they already are float32)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        # torch refuses to share a read-only buffer (pandas hands some out): copy only those.
        self.x = np.asarray(x, dtype=np.float32) if np.asarray(x).flags.writeable else np.array(x, dtype=np.float32)
        self.y = np.array(y, dtype=np.float32).reshape(-1)
        if self.x.ndim != 2 or len(self.x) != len(self.y):
            raise ValueError(f"features of shape {self.x.shape} do not match {len(self.y)} labels")

    @property
    def n_rows(self) -> int:
        return len(self.y)

    @property
    def width(self) -> int:
        return int(self.x.shape[1])

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x[lo:hi], self.y[lo:hi]

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[index], self.y[index]


class SpillRows:
    """Rows appended block by block to an unlinked temporary file and read back with ``pread``.

    The file has no name once created (it disappears with the process or :meth:`close`),
    is created mode 0600 in ``directory`` (the partner's work directory: the same disk and
    the same protection as its ingested table), and holds features then labels per row.
    """

    def __init__(self, width: int, directory: Path | str | None = None) -> None:
        self._width = int(width)
        self._row_bytes = 4 * (self._width + 1)
        self._file = tempfile.TemporaryFile(dir=directory, prefix=".fedcrm-rows-")  # unlinked, 0600
        self._fd = self._file.fileno()
        self._n = 0

    @property
    def n_rows(self) -> int:
        return self._n

    @property
    def width(self) -> int:
        return self._width

    def append(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows at the end (features float32 ``(m, width)``, labels ``(m,)``)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._width or len(x) != len(y):
            raise ValueError(f"block of shape {x.shape} with {len(y)} labels does not fit rows of width {self._width}")
        packed = np.empty((len(x), self._width + 1), dtype=np.float32)
        packed[:, : self._width] = x
        packed[:, self._width] = np.asarray(y, dtype=np.float32).reshape(-1)
        os.pwrite(self._fd, packed.tobytes(), self._n * self._row_bytes)
        self._n += len(x)

    def _packed(self, lo: int, hi: int) -> np.ndarray:
        if not 0 <= lo <= hi <= self._n:
            raise IndexError(f"rows {lo}:{hi} outside 0:{self._n}")
        raw = os.pread(self._fd, (hi - lo) * self._row_bytes, lo * self._row_bytes)
        return np.frombuffer(raw, dtype=np.float32).reshape(hi - lo, self._width + 1)

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        packed = self._packed(lo, hi)
        return np.ascontiguousarray(packed[:, : self._width]), packed[:, self._width].copy()

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = np.asarray(index, dtype=np.int64)
        x = np.empty((len(index), self._width), dtype=np.float32)
        y = np.empty(len(index), dtype=np.float32)
        if not len(index):
            return x, y
        order = np.argsort(index, kind="stable")
        sorted_idx = index[order]
        starts = np.searchsorted(sorted_idx, np.arange(0, self._n + BLOCK_ROWS, BLOCK_ROWS))
        for b in range(len(starts) - 1):
            a, z = starts[b], starts[b + 1]
            if a == z:
                continue
            lo = b * BLOCK_ROWS
            packed = self._packed(lo, min(self._n, lo + BLOCK_ROWS))
            rows = packed[sorted_idx[a:z] - lo]
            x[order[a:z]] = rows[:, : self._width]
            y[order[a:z]] = rows[:, self._width]
        return x, y

    def close(self) -> None:
        """Release the file (its blocks are gone: it never had a name)."""
        self._file.close()


def epoch_order(n: int, batch_size: int, generator: object, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
    """One epoch as ``(block_lo, block_hi, positions within the block)`` per batch.

    ``batch_size <= 0``: one full batch in row order (deterministic, no shuffling).
    Batches never straddle blocks; within ``block_rows`` rows the order is exactly
    ``torch.randperm(n, generator=generator)``.
    """
    import torch

    if n == 0:
        return
    if batch_size <= 0:
        yield 0, n, np.arange(n)
        return
    if n <= block_rows:
        order = torch.randperm(n, generator=generator).numpy()  # type: ignore[arg-type]
        for start in range(0, n, batch_size):
            yield 0, n, order[start : start + batch_size]
        return
    n_blocks = -(-n // block_rows)
    for b in torch.randperm(n_blocks, generator=generator).tolist():  # type: ignore[arg-type]
        lo, hi = b * block_rows, min(n, (b + 1) * block_rows)
        inner = torch.randperm(hi - lo, generator=generator).numpy()  # type: ignore[arg-type]
        for start in range(0, hi - lo, batch_size):
            yield lo, hi, inner[start : start + batch_size]
