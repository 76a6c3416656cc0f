"""U-ViT (Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models").

Time and class enter as tokens; long skip connections concatenate an in-block's output with the
matching out-block's input and project back to the width; the position embedding is learned and
qkv has no bias. Optionally (``learn_sigma``) the output doubles its channels so the model can be
trained with DiT's learned-variance loss; the published U-ViT does not.

Parameter names are U-ViT's own (``libs/uvit.py``), so its released weights load as they are.
U-ViT numbers its training steps 1..N where this project (like DiT) numbers them 0..N-1: a model
built with ``timestep_offset=1`` adds 1 to the timesteps it is given, so that U-ViT's weights see
the numbers they were trained on.
"""

from __future__ import annotations

import torch
from timm.layers import Mlp, PatchEmbed, trunc_normal_
from torch import nn

from .attention import AUTO, Attention
from .layers import CheckpointedBlocks, check_model_input, timestep_embedding


class UViTBlock(nn.Module):
    """Pre-norm transformer block; out-blocks first fuse the long skip."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip: bool, attention: str = AUTO) -> None:
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=False, backend=attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, L, D)
        x = x + self.attn(self.norm1(x))  # (B, L, D)
        return x + self.mlp(self.norm2(x))  # (B, L, D)


class UViT(CheckpointedBlocks, nn.Module):
    """U-ViT with depth//2 in-blocks, one mid-block and depth//2 out-blocks."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        embed_dim: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = False,
        mlp_time_embed: bool = False,
        conv: bool = True,
        attention: str = AUTO,
        preset_name: str = "U-ViT",
        timestep_offset: int = 0,
    ) -> None:
        super().__init__()
        if depth % 2:
            raise ValueError(f"U-ViT depth must be even (depth/2 in-blocks and out-blocks), got {depth}")
        self.preset_name = preset_name
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.class_dropout_prob = class_dropout_prob
        self.timestep_offset = timestep_offset

        self.patch_embed = PatchEmbed(input_size, patch_size, in_channels, embed_dim, bias=True)
        self.time_embed = (
            nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim))
            if mlp_time_embed
            else nn.Identity()
        )
        # Row num_classes is the null class used for classifier-free guidance.
        self.label_emb = nn.Embedding(num_classes + 1, embed_dim)
        self.extras = 2  # the time token and the class token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.patch_embed.num_patches, embed_dim))
        self.in_blocks = nn.ModuleList(
            [UViTBlock(embed_dim, num_heads, mlp_ratio, skip=False, attention=attention) for _ in range(depth // 2)]
        )
        self.mid_block = UViTBlock(embed_dim, num_heads, mlp_ratio, skip=False, attention=attention)
        self.out_blocks = nn.ModuleList(
            [UViTBlock(embed_dim, num_heads, mlp_ratio, skip=True, attention=attention) for _ in range(depth // 2)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * self.out_channels)
        self.final_layer = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1) if conv else nn.Identity()
        self.initialize_weights()

    @property
    def transformer_blocks(self) -> list[nn.Module]:
        """Blocks in execution order: in-blocks, the mid-block, out-blocks."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    @property
    def blocks(self) -> nn.ModuleList:
        """All transformer blocks in execution order (a view; parameters stay under their own names)."""
        return nn.ModuleList(self.transformer_blocks)

    def initialize_weights(self) -> None:
        """U-ViT's initialisation: truncated-normal linears and positions, unit LayerNorms."""
        trunc_normal_(self.pos_embed, std=0.02)

        def _init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.LayerNorm):
                nn.init.constant_(module.bias, 0)
                nn.init.constant_(module.weight, 1.0)

        self.apply(_init)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W) image (U-ViT's channel-last patch layout)."""
        p, c = self.patch_size, self.out_channels
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_model_input(self, x, t, y)
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids.bool(), self.num_classes, y)
        elif self.training and self.class_dropout_prob > 0:
            y = torch.where(torch.rand(y.shape[0], device=y.device) < self.class_dropout_prob, self.num_classes, y)
        if self.timestep_offset:
            t = t + self.timestep_offset
        x = self.patch_embed(x)  # (B, N, D)
        time_token = self.time_embed(timestep_embedding(t, x.shape[-1])).unsqueeze(1)  # (B, 1, D)
        label_token = self.label_emb(y).unsqueeze(1)  # (B, 1, D)
        x = torch.cat((label_token, time_token.to(x.dtype), x), dim=1) + self.pos_embed  # (B, L, D), L = N + 2
        skips = []
        index = 0
        for block in self.in_blocks:
            x = self.run_block(index, block, x)  # (B, L, D)
            skips.append(x)
            index += 1
        x = self.run_block(index, self.mid_block, x)  # (B, L, D)
        for block in self.out_blocks:
            index += 1
            x = self.run_block(index, block, x, skips.pop())  # (B, L, D)
        x = self.decoder_pred(self.norm(x))  # (B, L, p*p*C_out)
        x = self.unpatchify(x[:, self.extras :, :])  # (B, C_out, H, W)
        return self.final_layer(x)  # (B, C_out, H, W)


# Embedding size, depth, heads of the four sizes (depth counts in- plus out-blocks).
UVIT_SIZES = {"S": (512, 12, 8), "M": (768, 16, 12), "L": (1024, 20, 16), "H": (1152, 28, 16)}
UVIT_PATCHES = (2, 4)
