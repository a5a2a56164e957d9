"""A decoder-only GPT (pre-norm, SDPA attention, tied embeddings) with a byte tokenizer and a slot-based KV cache.

Training calls `model(idx)` for logits over every position. Inference preallocates a `KVCache` with a number of
slots (one per concurrent sequence) and calls `model(idx, cache=cache, slots=slots, positions=positions)`: the
new tokens' keys/values are written into their slots and each token attends causally over its slot's prefix, so
one call can prefill a prompt (B=1, T>1) or decode one token for many sequences at once (B>1, T=1).
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

BYTE_VOCAB = 256
BOS_ID = 256
EOS_ID = 257
SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = BYTE_VOCAB + SPECIAL_TOKENS
    """Token ids: 256 bytes, then BOS and EOS of the `ByteTokenizer`."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; d_model must divide by it."""
    d_model: int = 256
    """Residual stream width; the MLP hidden width is 4 * d_model."""
    max_seq_len: int = 256
    """Longest sequence (learned position embeddings have this many rows)."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        for field in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, field) < 1:
                raise ValueError(f"GPTConfig.{field} must be >= 1, got {getattr(self, field)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


PRESETS: dict[str, GPTConfig] = {
    # CPU tests and the local acceptance run: big enough that matmuls dominate (for a meaningful CPU MFU).
    "tiny": GPTConfig(n_layer=4, n_head=4, d_model=256, max_seq_len=256),
    # GPT-3 paper sizes (Brown et al. 2020, table 2.1) with a byte vocabulary.
    "125m": GPTConfig(n_layer=12, n_head=12, d_model=768, max_seq_len=2048),
    "350m": GPTConfig(n_layer=24, n_head=16, d_model=1024, max_seq_len=2048),
    "1.3b": GPTConfig(n_layer=24, n_head=32, d_model=2048, max_seq_len=2048),
}


def get_preset(name: str, **overrides) -> GPTConfig:
    """The preset's config, optionally with fields replaced (e.g. max_seq_len); unknown names are a ValueError."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


class ByteTokenizer:
    """UTF-8 bytes are tokens 0..255; BOS and EOS follow. Needs no vocabulary file and no download."""

    bos_id = BOS_ID
    eos_id = EOS_ID
    vocab_size = BYTE_VOCAB + SPECIAL_TOKENS

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def decode(self, ids: list[int]) -> str:
        """Special tokens are dropped; an incomplete or invalid UTF-8 sequence becomes U+FFFD, never an error."""
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder()


class StreamDecoder:
    """Token-by-token decoding for streaming: holds back the bytes of a multi-byte character until it is whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if not 0 <= token_id < BYTE_VOCAB:
            return ""
        return self._decoder.decode(bytes([token_id]))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class KVCache:
    """Preallocated keys and values: [n_layer, max_slots, n_head, max_len, head_dim] each.

    A slot holds one sequence; the caller (a scheduler) decides which slot a request uses and its positions.
    Stale entries past a sequence's current length are harmless: attention masks keys after the query position.
    Head-major rows make a slot's prefix [n_head, length, head_dim] exactly what attention reads, so a batch in
    consecutive slots is attended straight from the cache (a view, no copy); see `CachedBatch`.
    """

    def __init__(self, config: GPTConfig, max_slots: int, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.max_slots = max_slots
        self.max_len = min(max_len or config.max_seq_len, config.max_seq_len)
        shape = (config.n_layer, max_slots, config.n_head, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


ROWS_PER_PIECE = 8
"""Rows of a batch at different lengths are attended in pieces of at most this many, each only up to its own
longest sequence: fewer cached keys to read (attention at decode is bound by reading them), a few more calls."""


@dataclass(frozen=True)
class _Piece:
    rows: slice
    """Rows of the batch in this piece (they sit in consecutive cache slots, in order)."""
    first_slot: int
    key_len: int
    """Keys attended: up to the furthest query position of these rows (not the cache's max_len)."""
    mask: torch.Tensor | None
    """[rows, 1, T, key_len] key allowed for query, or None when every key is visible to every query."""


class CachedBatch:
    """How one cached forward reads the cache, worked out once per forward instead of once per layer.

    The batch is cut into pieces of rows in consecutive slots, so every piece's keys and values are a view of the
    cache (no gather copy) holding only the positions that piece can attend to.
    """

    def __init__(self, slots: torch.Tensor, positions: torch.Tensor):
        batch, length = positions.shape
        self.positions = positions
        self.slot_index = slots[:, None].expand(batch, length)
        """[B, T] the slot of every new token, for writing its key and value."""
        slot_list = slots.tolist()
        furthest = positions.max(dim=1).values.tolist()
        nearest = positions.min(dim=1).values.tolist()
        self.pieces: list[_Piece] = []
        start = 0
        for row in range(1, batch + 1):
            uniform = len(set(furthest[start:row + 1])) == 1
            if row < batch and slot_list[row] == slot_list[row - 1] + 1 and (row - start < ROWS_PER_PIECE or uniform):
                continue  # the piece goes on: next slot, and either still short or every row at one length
            self.pieces.append(self._piece(slice(start, row), slot_list[start], furthest[start:row],
                                           nearest[start:row], length))
            start = row

    def _piece(self, rows: slice, first_slot: int, furthest: list[int], nearest: list[int], length: int) -> _Piece:
        key_len = max(furthest) + 1
        # One new token per row, every row at the same position: it may attend to every key, no mask.
        if length == 1 and min(nearest) == key_len - 1:
            return _Piece(rows, first_slot, key_len, None)
        key_positions = torch.arange(key_len, device=self.positions.device)[None, None, None, :]
        return _Piece(rows, first_slot, key_len, key_positions <= self.positions[rows, None, :, None])

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Attention of q [B, n_head, T, head_dim] over one layer's cached keys and values."""
        outputs = []
        for piece in self.pieces:
            slots = slice(piece.first_slot, piece.first_slot + piece.rows.stop - piece.rows.start)
            outputs.append(F.scaled_dot_product_attention(
                q[piece.rows], keys[slots, :, :piece.key_len].to(q.dtype),
                values[slots, :, :piece.key_len].to(q.dtype), attn_mask=piece.mask))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, layer: int, cache: KVCache | None, batch_info: CachedBatch | None
                ) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, self.head_dim).unbind(dim=2)
        if cache is None or batch_info is None:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=True)
        else:
            # [B, T] slot and position indices around the head slice: the indexed shape is [B, T, n_head, head_dim].
            cache.k[layer][batch_info.slot_index, :, batch_info.positions] = k.to(cache.k.dtype)
            cache.v[layer][batch_info.slot_index, :, batch_info.positions] = v.to(cache.v.dtype)
            out = batch_info.attend(q.transpose(1, 2), cache.k[layer], cache.v[layer])
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=False)
        self.down = nn.Linear(4 * config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, layer, cache, batch_info):
        x = x + self.attn(self.attn_norm(x), layer, cache, batch_info)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layer)."""
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue  # LayerNorm weights/biases keep their ones/zeros
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith(("proj.weight", "down.weight")) \
                else 0.02
            nn.init.normal_(param, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor, *, cache: KVCache | None = None, slots: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab]. Without a cache, idx [B, T] are whole sequences from position 0.

        With a cache, idx [B, T] are new tokens of the sequences in cache slots `slots` [B] at absolute
        `positions` [B, T]; every earlier position of those slots must already be in the cache.
        """
        batch, length = idx.shape
        batch_info = None
        if cache is None:
            if length > self.config.max_seq_len:
                raise ValueError(f"sequence length {length} exceeds max_seq_len {self.config.max_seq_len}")
            positions_used = torch.arange(length, device=idx.device)[None, :]
        else:
            if slots is None or positions is None:
                raise ValueError("a cached forward needs slots [B] and positions [B, T]")
            if slots.shape != (batch,) or positions.shape != (batch, length):
                raise ValueError(f"slots {tuple(slots.shape)} / positions {tuple(positions.shape)} do not match "
                                 f"idx {tuple(idx.shape)}: expected ({batch},) and ({batch}, {length})")
            if int(positions.max()) >= cache.max_len or int(positions.min()) < 0:
                raise ValueError(f"positions must lie in [0, {cache.max_len}) (the cache's max_len)")
            positions_used = positions
            batch_info = CachedBatch(slots, positions)
        x = self.tok_emb(idx) + self.pos_emb(positions_used)
        for layer, block in enumerate(self.blocks):
            x = block(x, layer, cache, batch_info)
        return F.linear(self.final_norm(x), self.tok_emb.weight)  # tied: the output head is the token embedding

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def non_embedding_params(config: GPTConfig) -> int:
    """Parameters outside the token and position embeddings (the tied output head is the token embedding)."""
    per_block = 4 * config.d_model * config.d_model + 8 * config.d_model * config.d_model  # attention + MLP
    norms_per_block = 2 * 2 * config.d_model
    return config.n_layer * (per_block + norms_per_block) + 2 * config.d_model


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token, torchtitan's formula (docs/metrics.md#train): 6*N + 6*L*H*Q*T.

    N: non-embedding parameters (forward + backward = 6 FLOPs each); the second term is attention scores and
    values, L layers, H heads, Q head dim, T sequence length (6, not 12: the causal mask halves the work).
    """
    return 6.0 * non_embedding_params(config) + 6.0 * config.n_layer * config.n_head * config.head_dim * seq_len


def quantize_int8(model: GPT) -> GPT:
    """The model's int8 dynamically quantized copy, for CPU inference: every `nn.Linear` (attention qkv and proj,
    MLP up and down) gets int8 weights and quantizes its float activations per batch; the rest stays fp32.

    The output head is not an `nn.Linear`: it is `F.linear` over the token embedding (tied weights), so it stays
    fp32 -- quantizing it would need untying it from the embedding, and the logits it makes decide every greedy
    token, where a full-precision head keeps agreement with the fp32 model high for little time (one matmul per
    step against 4 per block). The quantized Linear layers take and return float tensors, so the KV cache and the
    batched/cached forward are unchanged. `quantize_dynamic` has CPU kernels only: the model must be on the CPU.
    """
    if any(parameter.device.type != "cpu" for parameter in model.parameters()):
        raise ValueError("int8 dynamic quantization runs on the CPU only; the model is not on the CPU")
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).eval()
