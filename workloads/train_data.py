"""Training batches that are a pure function of (seed, step): resuming at step s reproduces the same data.

The synthetic source is a fixed random bigram chain with a few successors per token, so the loss has something
to learn (from ln(vocab) towards ln(successors)) without any download. A local text file is the alternative:
windows at random offsets of its UTF-8 bytes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workloads.model import BYTE_VOCAB


class SyntheticBigramData:
    """Sequences from a seeded bigram chain over the 256 byte tokens (each token has `successors` followers)."""

    def __init__(self, seed: int, successors: int = 4):
        generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.table = torch.randint(0, BYTE_VOCAB, (BYTE_VOCAB, successors), generator=generator)

    def batch(self, step: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """[batch_size, seq_len + 1] tokens for `step` (inputs are [:, :-1], targets [:, 1:])."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        choices = torch.randint(0, self.table.shape[1], (batch_size, seq_len + 1), generator=generator)
        tokens = torch.empty(batch_size, seq_len + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, BYTE_VOCAB, (batch_size,), generator=generator)
        for position in range(1, seq_len + 1):
            tokens[:, position] = self.table[tokens[:, position - 1], choices[:, position]]
        return tokens


class TextFileData:
    """Random windows of a local text file's bytes."""

    def __init__(self, path: str | Path, seed: int, seq_len: int):
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read data file {path}: {error.strerror or error}") from None
        if len(raw) < seq_len + 2:
            raise ValueError(f"data file {path} has {len(raw)} bytes, fewer than one sequence ({seq_len + 1})")
        self.tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        self.seed = seed

    def batch(self, step: int, batch_size: int, seq_len: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.tokens) - seq_len - 1, (batch_size,), generator=generator)
        return torch.stack([self.tokens[start:start + seq_len + 1] for start in starts.tolist()])


def rank_slice(global_batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous share of the global batch: the global batch does not depend on the world size."""
    per_rank = global_batch.shape[0] // world_size
    return global_batch[rank * per_rank:(rank + 1) * per_rank]
