"""The attention baselines of the DAAM paper (arXiv 2401.11143) and GQDAAM, all over the layer tokens.

Section numbers (§) refer to docs/paper-notes.md; DAAM itself is in :mod:`daamflow.models.daam`.

* :class:`GroupedQueryAttention` - the fkodom-style GQA the authors copied (§1.8, §4.6), or textbook GQA.
* :class:`GQDAAM` - DAAM -> Linear(d -> 512) -> GQA over the layer tokens.
* :class:`LayerSelfAttention` - multi-head self-attention over the layer tokens (optionally -> BatchNorm), with a
  switch reproducing the released code's attention across the mini-batch (§4.2).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from daamflow.models.daam import DAAM


class GroupedQueryAttention(nn.Module):
    """Grouped-query self-attention over the tokens of ``x`` (B, T, embed_dim), batch first.

    Default (``standard=False``): the fkodom ``MultiheadGQA`` the authors copied (§1.8, §4.6): q embed->embed,
    k/v embed->kv_dim with kv_dim = embed/query_heads*kv_heads, xavier-normal weights and zero biases. The query heads
    of each group (consecutive heads) are *summed* before the dot product, so there are only ``kv_heads`` attention
    maps and the output has kv_dim features; logits are scaled twice by 1/sqrt(head_dim); LayerNorm(kv_dim) (MAGNETO)
    then out kv_dim->embed. For embed 512, q 8, kv 2: 460,288 parameters, the paper's count.

    ``standard=True``: textbook GQA: query head i attends with kv head i // (query_heads/kv_heads), one 1/sqrt(head_dim)
    scaling, heads concatenated (embed features), LayerNorm(embed) if ``layer_norm``, out embed->embed.
    """

    def __init__(
        self,
        embed_dim: int = 512,
        query_heads: int = 8,
        kv_heads: int = 2,
        layer_norm: bool = True,
        standard: bool = False,
    ) -> None:
        super().__init__()
        if query_heads < 1 or kv_heads < 1 or embed_dim % query_heads or query_heads % kv_heads:
            raise ValueError(
                f"GroupedQueryAttention: need embed_dim % query_heads == 0 and query_heads % kv_heads == 0, "
                f"got embed_dim={embed_dim}, query_heads={query_heads}, kv_heads={kv_heads}"
            )
        self.embed_dim, self.query_heads, self.kv_heads, self.standard = embed_dim, query_heads, kv_heads, standard
        self.head_dim = embed_dim // query_heads
        kv_dim = self.head_dim * kv_heads
        attn_dim = embed_dim if standard else kv_dim  # width of the concatenated head outputs
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, kv_dim)
        self.v_proj = nn.Linear(embed_dim, kv_dim)
        self.norm = nn.LayerNorm(attn_dim) if layer_norm else None
        self.out_proj = nn.Linear(attn_dim, embed_dim)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"GroupedQueryAttention expects (batch, tokens, {self.embed_dim}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.query_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, hd)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        groups = self.query_heads // self.kv_heads
        if self.standard:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        else:  # fkodom: q / sqrt(hd), sum the group's query heads, then logits / sqrt(hd) again
            q = q.view(b, self.kv_heads, groups, t, self.head_dim).sum(2) / math.sqrt(self.head_dim)
            attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, -1)
        if self.norm is not None:
            out = self.norm(out)
        return self.out_proj(out)


class GQDAAM(nn.Module):
    """DAAM -> Linear(d -> gqa_dim) -> grouped-query attention over the N layer tokens (§1.8, §4.6).

    ``daam_heads=None`` drops the DAAM (the GQA-only control). Output: (B, N, gqa_dim).
    """

    def __init__(self, num_layers: int, feature_dim: int, daam_heads: int | None = 8, gqa_dim: int = 512,
                 query_heads: int = 8, kv_heads: int = 2, standard_gqa: bool = False,
                 squared_variance: bool = False, daam_kernel: str = "eager") -> None:
        super().__init__()
        self.daam = (
            None
            if daam_heads is None
            else DAAM(num_layers, feature_dim, num_heads=daam_heads, squared_variance=squared_variance,
                      kernel=daam_kernel)
        )
        self.embed_transform = nn.Linear(feature_dim, gqa_dim)
        self.gqa = GroupedQueryAttention(gqa_dim, query_heads, kv_heads, layer_norm=True, standard=standard_gqa)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.daam is not None:
            x = self.daam(x)
        return self.gqa(self.embed_transform(x))


class LayerSelfAttention(nn.Module):
    """Multi-head self-attention with the N layers of ``x`` (B, N, d) as tokens, optionally followed by BatchNorm.

    ``batch_norm=True`` adds BatchNorm over the N layer channels (BatchNorm1d(N) on (B, N, d)), the working form of
    the released MHA->BN scripts (which call BatchNorm2d on a 3-D tensor). ``across_batch=True`` reproduces the
    released code's quirk (§4.2): nn.MultiheadAttention without batch_first on (B, N, d) attends across the
    B samples of the mini-batch, separately for each layer, so a prediction depends on the other samples.
    """

    def __init__(
        self,
        feature_dim: int,
        num_heads: int = 8,
        num_layers: int | None = None,
        batch_norm: bool = False,
        across_batch: bool = False,
    ) -> None:
        super().__init__()
        if feature_dim % num_heads:
            raise ValueError(f"LayerSelfAttention: feature_dim={feature_dim} is not divisible by num_heads={num_heads}")
        if batch_norm and num_layers is None:
            raise ValueError("LayerSelfAttention: batch_norm=True needs num_layers (the BatchNorm channels)")
        self.across_batch = across_batch
        self.attn = nn.MultiheadAttention(feature_dim, num_heads, batch_first=True)
        self.norm = nn.BatchNorm1d(num_layers) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.transpose(0, 1) if self.across_batch else x  # quirk: sequence = the mini-batch
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        if self.across_batch:
            out = out.transpose(0, 1)
        return out if self.norm is None else self.norm(out)
