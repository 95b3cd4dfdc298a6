"""Small image classifiers for the demo and the tests: ordinary ``nn.Module``s.

All are in the ``conceptevo:`` namespace of the model registry (its ``_BUILTIN`` table names
them), so a study config can say ``arch = "conceptevo:small_vgg"`` (or ``small_resnet``,
``small_vit``). Their layers have readable names (``features.conv2_1``, ``stage2.0.conv1``,
``blocks.3.mlp.act``) so probed neurons are easy to locate.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SmallVGG(nn.Module):
    """A VGG-style CNN: stages of 3x3 conv + BatchNorm + ReLU, max-pooling between stages,
    and a two-layer classifier with dropout.

    Parameters
    ----------
    num_classes : output classes.
    widths : channels of each stage (each stage halves the resolution).
    depth : convolutions per stage (an int for all stages, or one per stage).
    dropout : dropout probability before each linear layer of the classifier.
    hidden : width of the classifier's hidden layer.
    global_pool : "max" (default: a part anywhere in the image counts) or "avg".
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64, 128),
                 depth: int | Sequence[int] = (1, 1, 2, 2), dropout: float = 0.3,
                 hidden: int = 128, global_pool: str = "max"):
        super().__init__()
        depths = [depth] * len(widths) if isinstance(depth, int) else list(depth)
        if len(depths) != len(widths):
            raise ValueError("depth needs one entry per stage of widths")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = 3
        for s, (c_out, d) in enumerate(zip(widths, depths), start=1):
            for j in range(1, d + 1):
                layers[f"conv{s}_{j}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
                layers[f"bn{s}_{j}"] = nn.BatchNorm2d(c_out)
                layers[f"relu{s}_{j}"] = nn.ReLU(inplace=True)
                c_in = c_out
            layers[f"pool{s}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        if global_pool not in ("max", "avg"):
            raise ValueError(f"global_pool must be 'max' or 'avg', not {global_pool!r}")
        self.pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(OrderedDict([
            ("drop1", nn.Dropout(dropout)),
            ("fc1", nn.Linear(c_in, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("drop2", nn.Dropout(dropout)),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)),
                ("bn", nn.BatchNorm2d(c_out))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-style CNN: a stem convolution, stages of :class:`BasicBlock` (the first block
    of each later stage halves the resolution), global average pooling and a linear head."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(3, widths[0], 3, padding=1, bias=False)),
            ("bn", nn.BatchNorm2d(widths[0])),
            ("relu", nn.ReLU(inplace=True)),
            ("pool", nn.MaxPool2d(2))]))
        c_in = widths[0]
        for s, c_out in enumerate(widths, start=1):
            stage = [BasicBlock(c_in if b == 0 else c_out, c_out,
                                stride=1 if (s == 1 or b > 0) else 2) for b in range(blocks)]
            self.add_module(f"stage{s}", nn.Sequential(*stage))
            c_in = c_out
        self.n_stages = len(widths)
        self.head = nn.Sequential(OrderedDict([
            ("drop", nn.Dropout(dropout)), ("fc", nn.Linear(c_in, num_classes))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in range(1, self.n_stages + 1):
            x = getattr(self, f"stage{s}")(x)
        return self.head(x.mean((2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention over tokens [B, T, dim]: one ``qkv`` projection, PyTorch's
    fused scaled dot-product attention, an output projection ``proj``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), where
    ``mlp`` is fc1 (dim -> mlp_dim), GELU (``act``: the block's probed hidden layer),
    dropout, fc2 (mlp_dim -> dim), dropout."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                 attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attention_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(dim, mlp_dim)),
            ("act", nn.GELU()),
            ("drop1", nn.Dropout(dropout)),
            ("fc2", nn.Linear(mlp_dim, dim)),
            ("drop2", nn.Dropout(dropout)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """A small vision transformer: non-overlapping ``patch_size`` patches embedded by a
    strided convolution (``patch_embed``), a class token, learned position embeddings,
    ``depth`` pre-norm :class:`TransformerBlock`s, a final LayerNorm and a linear ``head``.

    Tokens are [B, 1 + (image_size / patch_size)^2, dim]: the class token first, then the
    patch tokens in row-major order (64x64 images, patch 8: an 8x8 grid, 65 tokens). The
    probed layers (ConceptEvo's default for transformers) are the MLP hidden activations
    ``blocks.<i>.mlp.act``, [B, 65, mlp_dim].

    Parameters
    ----------
    num_classes : output classes.
    image_size : side of the square input images (the position embedding fixes it).
    patch_size : side of a patch; must divide ``image_size``.
    dim : token width; ``heads`` must divide it.
    depth : transformer blocks.
    heads : attention heads.
    mlp_dim : hidden width of each block's MLP (its neurons are the probed units).
    dropout : dropout after the embeddings, in the MLPs and before the head.
    attention_dropout : dropout on the attention weights (training only).
    pool : what the head reads: ``"cls"`` (the class token, default) or ``"mean"`` (the
        mean of the patch tokens).
    """

    num_prefix_tokens = 1  # the class token (timm's attribute: ConceptEvo reads it)

    def __init__(self, num_classes: int = 10, image_size: int = 64, patch_size: int = 8,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_dim: int = 128,
                 dropout: float = 0.1, attention_dropout: float = 0.0, pool: str = "cls"):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide image_size ({image_size})")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
        self.pool = pool
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_dim, dropout,
                                                       attention_dropout)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """ViT's usual initialisation: truncated normal (std 0.02) for the embeddings and the
        linear layers, zero biases; the patch embedding as a linear layer (LeCun normal)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        fan_in = self.patch_embed.in_channels * math.prod(self.patch_embed.kernel_size)
        nn.init.trunc_normal_(self.patch_embed.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.patch_embed.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)          # [B, P, dim]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        x = self.norm(self.blocks(x))
        pooled = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(1)
        return self.head(self.head_drop(pooled))
