"""Cells streamed in chunks: bounded memory for in-memory, sparse or backed (on-disk) data."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cellformer._core import iter_lognorm_chunks

__all__ = ["ChunkedCells"]


class ChunkedCells(IterableDataset):
    """Log-normalised cells read a chunk at a time, in shuffled chunk order.

    Each epoch visits the chunks (``chunk_size`` consecutive cells of the sorted index, so a
    backed h5ad is read in contiguous slices) in a random order and shuffles the cells within
    each chunk. Memory holds one chunk, whatever the number of cells. Under distributed training
    each rank (and each DataLoader worker) reads its own share of the chunks.

    Parameters
    ----------
    X
        Cells × genes (dense, sparse, or an h5py/backed dataset).
    kind
        ``"counts"`` (log-normalised here) or ``"lognorm"``.
    indices
        Cells to use (all by default); sorted for contiguous reads.
    chunk_size
        Cells per read.
    shuffle
        Shuffle chunk order and cells within chunks (seeded by ``seed`` + epoch).
    seed
        Base seed.
    alignment
        Optional ``GeneAlignment`` onto a model's genes.
    """

    def __init__(
        self,
        X,
        kind: str,
        indices: np.ndarray | None = None,
        chunk_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        alignment=None,
    ):
        self.X = X
        self.kind = kind
        n = X.shape[0]
        self.indices = np.sort(np.arange(n) if indices is None else np.asarray(indices))
        self.chunk_size = chunk_size
        self.shuffle = shuffle
        self.seed = seed
        self.alignment = alignment
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffling for ``epoch``."""
        self.epoch = epoch

    def set_rank(self, rank: int, world_size: int) -> None:
        """Read only the chunks of ``rank`` out of ``world_size`` (distributed training)."""
        self.rank, self.world_size = rank, world_size

    def _chunks(self) -> list[np.ndarray]:
        """Return this shard's cells chunk by chunk: every chunk is split across ranks and workers."""
        starts = range(0, len(self.indices), self.chunk_size)
        chunks = [self.indices[s : s + self.chunk_size] for s in starts]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(chunks))
            chunks = [chunks[i] for i in order]
        shards, part = self._shard()
        if shards == 1:
            return chunks
        return [c[part::shards] for c in chunks if len(c[part::shards])]

    def _shard(self) -> tuple[int, int]:
        shards, part = self.world_size, self.rank
        worker = get_worker_info()
        if worker is not None:
            shards *= worker.num_workers
            part = self.rank * worker.num_workers + worker.id
        return shards, part

    def __len__(self) -> int:
        """Cells per rank and epoch (equal on every rank, as distributed training needs)."""
        return int(np.ceil(len(self.indices) / max(self.world_size, 1)))

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        chunks = self._chunks()
        shards, _ = self._shard()
        # every rank yields the same number of cells: a rank short of cells repeats its first
        # ones (as DistributedSampler pads), so no rank waits for a batch that never comes
        target = int(np.ceil(len(self.indices) / shards))
        produced = 0
        while produced < target and chunks:
            for chunk in chunks:
                for _, block in iter_lognorm_chunks(
                    self.X, self.kind, chunk, alignment=self.alignment, chunk_size=len(chunk)
                ):
                    rows = rng.permutation(len(block)) if self.shuffle else np.arange(len(block))
                    data = torch.as_tensor(np.asarray(block, dtype=np.float32)[rows])
                    take = min(len(data), target - produced)
                    yield from data[:take]
                    produced += take
                if produced >= target:
                    return
