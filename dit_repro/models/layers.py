"""Pieces both models share: the sinusoidal timestep embedding, position embeddings, input checks
and the activation-checkpointed block call."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos | sin] as in DiT and U-ViT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding of a grid_size x grid_size grid, shape (grid_size**2, embed_dim).

    Same values as the original DiT release (MAE's recipe), so its checkpoints load and agree.
    """
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)
    emb_h = _sincos_1d(embed_dim // 2, grid[0])
    emb_w = _sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def check_model_input(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
    """Raise a ValueError naming the expected shape when the inputs do not fit the model."""
    expected = (model.in_channels, model.input_size, model.input_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{model.preset_name} expects x of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), "
            f"got {tuple(x.shape)}"
        )
    batch = x.shape[0]
    if t.shape != (batch,):
        raise ValueError(f"expects timesteps t of shape ({batch},), got {tuple(t.shape)}")
    if y.shape != (batch,):
        raise ValueError(f"expects class labels y of shape ({batch},), got {tuple(y.shape)}")


class CheckpointedBlocks:
    """Mixin: runs block i through non-reentrant activation checkpointing when it is selected.

    Checkpointing only applies while gradients are being recorded, so sampling and evaluation
    never pay for recompute (one reference implementation hard-wired it on, sampling included).
    """

    checkpointed: frozenset[int] = frozenset()

    def run_block(self, index: int, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        """``block(*args)``, checkpointed when ``index`` is selected and autograd is recording."""
        if index in self.checkpointed and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def set_checkpointing(self, indices: frozenset[int] | set[int]) -> None:
        """Select the block indices (in execution order, see ``transformer_blocks``) to checkpoint."""
        count = len(self.transformer_blocks)
        bad = sorted(i for i in indices if not 0 <= i < count)
        if bad:
            raise ValueError(f"block indices {bad} out of range: the model has {count} blocks (0..{count - 1})")
        self.checkpointed = frozenset(indices)
