"""A joint image + text transformer, with the frozen LM block over both modalities.

The paper's multi-modal setting (its VQA and retrieval experiments, METER-style): visual
tokens and text tokens pass *together* through the frozen LM block, so the block's attention
mixes the modalities. Here:

- image tokens: a patch embedding (timm's ``PatchEmbed``, or a small convolutional stem for
  tiny images), their own learned position embedding, and a few timm blocks over the image
  tokens alone (``visual_blocks``);
- text tokens: ``TextEmbedding`` (word + position) of the question or caption;
- a learned modality-type embedding added to each token (0: image, 1: text);
- the joint sequence ``[cls, image tokens, text tokens]`` through ``blocks``, an
  ``nn.ModuleList`` of timm ``Block``s run by ``run_blocks`` with a padding mask (True on
  cls and image tokens, the text's own mask on text tokens). The frozen LM block is appended
  to ``blocks`` with ``encoders.visual.vit.insert_after_last_block``, exactly as after a ViT, so it
  runs over the joint sequence, bidirectionally, with padded text tokens masked; the
  information-filtering probe hooks ``blocks[-2]`` and ``blocks[-1]`` as for every encoder.

``VQAModel`` reads the answer logits off the class token. ``DualEncoder`` (retrieval) runs
the same encoder *twice*, once per modality: the image stream ``[cls, image tokens]`` and the
caption stream ``[cls, text tokens]`` both pass through the same ``blocks`` (so one frozen
block sees both modalities), each class token is normed, projected and L2-normalised, and a
learnable CLIP temperature scales their cosine similarities. A cross-encoder over the joint
sequence would need one pass per (image, caption) pair, N^2 passes for recall@K over N
images; the dual encoder needs 2N. The caption stream runs first and the image stream last,
so hooks on ``blocks`` (the probe's) see the image stream.
"""

from __future__ import annotations

import math

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from encoders.visual.masked_blocks import run_blocks
from encoders.visual.text import TextEmbedding

IMAGE, TEXT = 0, 1  # modality-type ids
# ViT-S/16's patch, width and heads: the joint encoders' image side on real 224x224 images.
VIT_S16 = {"patch_size": 16, "dim": 384, "num_heads": 6}


class ConvStem(nn.Module):
    """(B, C, H, W) -> (B, (H/p)(W/p), dim): stride-2 3x3 convolutions (BN, ReLU) down to
    ``patch``-pixel cells, then a 1x1 convolution to the width (Xiao et al. 2021, "Early
    convolutions help transformers see better"). Token i covers the i-th ``patch`` x
    ``patch`` cell in row-major order, as timm's ``PatchEmbed``. Convolutions see a shape
    the same wherever it falls in its cell; a linear patch embedding would have to learn it
    at every offset."""

    def __init__(self, in_chans: int, dim: int, patch: int, width: int = 32) -> None:
        super().__init__()
        steps = int(math.log2(patch))
        if 2**steps != patch:
            raise ValueError(f"conv stem patch {patch}; valid: a power of 2")
        layers: list[nn.Module] = []
        chans = in_chans
        for _ in range(steps):
            layers += [nn.Conv2d(chans, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            chans = width
        layers.append(nn.Conv2d(chans, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).flatten(2).transpose(1, 2)  # (B, dim, h, w) -> (B, h*w, dim)


def _init(module: nn.Module) -> None:
    """timm's ViT init for the trainable parts: truncated-normal linear weights, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class JointEncoder(nn.Module):
    """The shared encoder: image tokens, text tokens, and ``blocks`` over a token sequence.

    Subclasses add a head; the frozen block is appended to ``blocks`` after construction."""

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        in_chans: int = 3,
        dim: int,
        num_heads: int,
        visual_depth: int,
        joint_depth: int,
        vocab_size: int,
        max_text_len: int,
        mlp_ratio: float = 4.0,
        conv_stem: bool = False,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_patches = (img_size // patch_size) ** 2
        if conv_stem:
            self.patch_embed: nn.Module = ConvStem(in_chans, dim, patch_size)
        else:
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        self.visual_blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(visual_depth)])
        self.text = TextEmbedding(vocab_size, dim, max_text_len)
        self.type_embed = nn.Embedding(2, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(joint_depth)])
        self.norm = nn.LayerNorm(dim)
        for p in (self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.type_embed.weight, std=0.02)
        self.apply(_init)

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, n_patches, dim): patches, positions, the visual-only blocks."""
        x = self.patch_embed(image) + self.pos_embed
        x = run_blocks(self.visual_blocks, x)
        return x + self.type_embed.weight[IMAGE]

    def text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, dim)."""
        return self.text(ids) + self.type_embed.weight[TEXT]

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, dim) tokens, (B, T) True on real tokens -> (B, dim): the normed class token
        after ``[cls, tokens]`` has passed every block (the frozen one included)."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)  # (B, 1 + T, dim)
        if padding_mask is not None:
            real = torch.ones(tokens.shape[0], 1, dtype=torch.bool, device=tokens.device)
            padding_mask = torch.cat([real, padding_mask.bool()], dim=1)  # (B, 1 + T)
        return self.norm(run_blocks(self.blocks, x, padding_mask))[:, 0]


class VQAModel(JointEncoder):
    """(image, question ids, question mask) -> answer logits (B, num_answers), from the class
    token of the joint sequence; the classifier is ViLT's (linear, LayerNorm, GELU, linear)."""

    def __init__(self, *, num_answers: int, **encoder: object) -> None:
        super().__init__(**encoder)
        dim = self.norm.normalized_shape[0]
        self.head = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                  nn.Linear(2 * dim, num_answers))
        self.head.apply(_init)

    def forward(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image_tokens = self.image_tokens(image)  # (B, N, dim)
        tokens = torch.cat([image_tokens, self.text_tokens(ids)], dim=1)  # (B, N + L, dim)
        real = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=ids.device)
        padding_mask = torch.cat([real, mask.bool()], dim=1)  # (B, N + L)
        return self.head(self.encode(tokens, padding_mask))


class DualEncoder(JointEncoder):
    """Retrieval: image and caption embedded separately by the same encoder (see the module
    docstring), each L2-normalised in a shared ``embed_dim`` space.

    ``forward(image, ids, mask)`` returns ``(image_emb (B, E), text_emb (B, E), scale)``,
    open_clip's convention: ``scale`` is the exponentiated learnable temperature, clamped
    at 100 as in CLIP, which the contrastive loss multiplies the similarities by."""

    def __init__(self, *, embed_dim: int, **encoder: object) -> None:
        super().__init__(**encoder)
        dim = self.norm.normalized_shape[0]
        self.image_proj = nn.Linear(dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(dim, embed_dim, bias=False)
        nn.init.trunc_normal_(self.image_proj.weight, std=dim**-0.5)
        nn.init.trunc_normal_(self.text_proj.weight, std=dim**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's init

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, E), unit length."""
        emb = self.image_proj(self.encode(self.image_tokens(image), None))
        return nn.functional.normalize(emb, dim=-1)

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, E), unit length."""
        emb = self.text_proj(self.encode(self.text_tokens(ids), mask))
        return nn.functional.normalize(emb, dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100)

    def forward(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text_emb = self.embed_text(ids, mask)  # first: the probe's hooks keep the last pass
        return self.embed_image(image), text_emb, self.scale()
