"""Image-text retrieval's objective: CLIP's contrastive loss and recall@K both ways.

Samples are (image, caption) pairs whose target is the image's index, as COCO's 5 captions
per image make 5 pairs. The loss is CLIP's symmetric InfoNCE over the batch, image->text and
text->image, where every caption of the same image in the batch is a positive (the
log of the summed probability of the positives). Validation embeds every image once and
every caption, and scores recall@1/5/10 in both directions: image->text is a hit when ANY of
the image's captions is among the K most similar captions; text->image when the caption's
image is among the K most similar images. ``val_rmean`` (the mean of the six) is the task's
metric; its chance level is the expected rmean of a random ranking.

``val_loader`` gives validation two streams instead of the pairs: each distinct image once
(one read and transform per image, not one per caption) and each caption once (the in-memory
token rows, no image read). ``evaluate`` takes those streams or plain batches of pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from experiments.batches import to_device
from experiments.datasets.captions import CaptionPairs

KS = (1, 5, 10)


def contrastive_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives: ``logits`` (R, C) image rows x caption
    columns, ``positive`` (R, C) bool. Each row's loss is -log of the softmax mass on its
    positive columns, each column's likewise over rows; the two directions are averaged."""
    masked = logits.masked_fill(~positive, float("-inf"))
    i2t = logits.logsumexp(1) - masked.logsumexp(1)  # (R,)
    t2i = logits.logsumexp(0) - masked.logsumexp(0)  # (C,)
    return (i2t.mean() + t2i.mean()) / 2


def recall_at_k(sim: torch.Tensor, caption_image: torch.Tensor,
                ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K both ways from ``sim`` (N images, M captions) and each caption's image row
    (M,). A tie counts in the item's favour (ranks count strictly better items)."""
    n, m = sim.shape
    positive = caption_image[None, :] == torch.arange(n, device=sim.device)[:, None]  # (N, M)
    if not positive.any(1).all():
        raise ValueError("every image needs at least one caption")
    best = sim.masked_fill(~positive, float("-inf")).amax(1)  # (N,) its best caption's score
    i2t_rank = (sim > best[:, None]).sum(1)  # (N,) captions ranked above it
    own = sim[caption_image, torch.arange(m, device=sim.device)]  # (M,)
    t2i_rank = (sim > own[None, :]).sum(0)  # (M,) images ranked above the caption's own
    out = {}
    for direction, rank in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k in ks:
            out[f"val_r{k}_{direction}"] = (rank < k).float().mean().item()
    out["val_rmean"] = sum(out.values()) / len(out)
    return out


def random_rmean(captions_per_image: Sequence[int], ks: Sequence[int] = KS) -> float:
    """The expected ``val_rmean`` of a random ranking: image->text R@K for an image with m
    of the M captions is 1 - C(M - m, K) / C(M, K); text->image R@K is K / N."""
    n, m_total = len(captions_per_image), sum(captions_per_image)
    values = []
    for k in ks:
        i2t = [1 - math.comb(m_total - m, k) / math.comb(m_total, k) if k <= m_total else 1.0
               for m in captions_per_image]
        values += [sum(i2t) / n, min(k, n) / n]
    return sum(values) / len(values)


class Retriever(Protocol):
    """What the retrieval objective needs of a model besides ``forward``."""

    def embed_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def scale(self) -> torch.Tensor: ...


class ImageBatch(NamedTuple):
    """The image stream's batch: distinct images and their indices."""

    image: torch.Tensor  # (B, C, H, W)
    index: torch.Tensor  # (B,)


class CaptionBatch(NamedTuple):
    """The caption stream's batch: token rows and each caption's image index."""

    ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L) True on real tokens
    index: torch.Tensor  # (B,)


class ValidationStreams:
    """What ``ContrastiveRetrieval.val_loader`` returns: iterating it yields the image
    stream's batches (``ImageBatch``, from ``images``, a loader of (image, index)) then the
    caption stream's (``CaptionBatch``, slices of the in-memory rows); iterated afresh every
    epoch, as a DataLoader is."""

    def __init__(self, images: DataLoader, ids: torch.Tensor, mask: torch.Tensor,
                 index: torch.Tensor, batch_size: int) -> None:
        self.images, self.ids, self.mask, self.index = images, ids, mask, index
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.images) + math.ceil(len(self.index) / self.batch_size)

    def __iter__(self) -> Iterator[ImageBatch | CaptionBatch]:
        for image, index in self.images:
            yield ImageBatch(image, index)
        for start in range(0, len(self.index), self.batch_size):
            rows = slice(start, start + self.batch_size)
            yield CaptionBatch(self.ids[rows], self.mask[rows], self.index[rows])


def embed_new_images(retriever: Retriever, image: torch.Tensor, index: torch.Tensor,
                     images: dict[int, torch.Tensor], device) -> None:
    """Embed the batch's images whose index is not in ``images`` yet (the first row of each),
    into ``images``: index -> embedding."""
    new, seen = [], set(images)
    for i, key in enumerate(index.tolist()):
        if key not in seen:
            seen.add(key)
            new.append(i)
    if new:
        emb = retriever.embed_image(image[new].to(device)).float().cpu()
        images.update({int(index[i]): e for i, e in zip(new, emb, strict=True)})


class ContrastiveRetrieval:
    """Loss on ``(image_emb, text_emb, scale)`` and recall@K validation (module docstring)."""

    # its loss is over a batch's pairs: a sample alone has none (no per-sample gradients)
    per_sample_loss = False

    def loss(self, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             target: torch.Tensor) -> torch.Tensor:
        image_emb, text_emb, scale = out
        logits = scale * image_emb @ text_emb.T  # (B, B): pair i's image x pair j's caption
        return contrastive_loss(logits, target[:, None] == target[None, :])

    def val_loader(self, dataset: Dataset, **loader_kwargs) -> Iterable:
        """Validation's image and caption streams over ``CaptionPairs``: a DataLoader (with
        ``loader_kwargs``) over its distinct images, then its captions in batches of the same
        size, sliced from the token tensors (already in memory: workers would only copy
        them); any other dataset: a plain DataLoader of its pairs."""
        if not isinstance(dataset, CaptionPairs):
            return DataLoader(dataset, **loader_kwargs)
        images = DataLoader(dataset.distinct_images(), **loader_kwargs)
        return ValidationStreams(images, dataset.ids, dataset.mask, dataset.image_index,
                                 loader_kwargs.get("batch_size", 1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]:
        """Each image is embedded once, each caption once; ``val_loss`` is the contrastive
        loss over the whole validation set (all images x all captions). ``loader`` yields
        ``ImageBatch`` / ``CaptionBatch`` (``val_loader``) or pair batches ``((image, ids,
        mask), image index)``, whose images are embedded at their first pair."""
        model.eval()
        retriever = cast(Retriever, model)
        images: dict[int, torch.Tensor] = {}
        texts, caption_image = [], []
        for batch in loader:
            if isinstance(batch, ImageBatch):
                embed_new_images(retriever, batch.image, batch.index, images, device)
                continue
            if isinstance(batch, CaptionBatch):
                ids, mask, index = batch
            else:
                (image, ids, mask), index = batch
                embed_new_images(retriever, image, index, images, device)
            ids, mask = to_device((ids, mask), device)
            texts.append(retriever.embed_text(ids, mask).float().cpu())
            caption_image.append(index)
        order = sorted(images)  # image index -> row
        row = {index: r for r, index in enumerate(order)}
        image_emb = torch.stack([images[i] for i in order])  # (N, E)
        text_emb = torch.cat(texts)  # (M, E)
        caption_row = torch.tensor([row[int(t)] for t in torch.cat(caption_image)])
        sim = image_emb @ text_emb.T  # (N, M)
        positive = caption_row[None, :] == torch.arange(len(order))[:, None]
        loss = contrastive_loss(retriever.scale().float().cpu() * sim, positive).item()
        return {"val_loss": loss, **recall_at_k(sim, caption_row)}


CONTRASTIVE = ContrastiveRetrieval()
