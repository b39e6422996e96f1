"""Image-text retrieval: captioned two-shape scenes (embedded), Flickr30K and COCO (the
Karpathy splits, from ``--data-dir``), with a dual encoder whose image and caption streams
pass through the same frozen block (``encoders.multimodal.DualEncoder``).

Samples are (image, caption) pairs whose target is the image's index, as COCO's 5 captions
per image make 5 pairs. The loss is CLIP's symmetric InfoNCE over the batch, image->text and
text->image, where every caption of the same image in the batch is a positive (the
log of the summed probability of the positives). Validation embeds every image once and
every caption, and scores recall@1/5/10 in both directions: image->text is a hit when ANY of
the image's captions is among the K most similar captions; text->image when the caption's
image is among the K most similar images. ``val_rmean`` (the mean of the six) is the task's
metric; its chance level is the expected rmean of a random ranking.

The embedded validation scenes have pairwise distinct canonical descriptions, so each
caption describes exactly one validation image and recall is well defined. Training scenes
are other draws of the same descriptions (positions and sizes differ).

Karpathy layout: ``dataset_flickr30k.json`` / ``dataset_coco.json``
(``{"images": [{"filename", "filepath" (COCO), "split", "sentences": [{"raw"}]}]}``), images
under ``images/`` (Flickr: ``images/<filename>``; COCO: ``images/<filepath>/<filename>``);
train on ``train`` (+ ``restval``), validate on ``val``. Images are resized to 224x224 and
not flipped (captions say left and right).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Protocol, cast

import torch
from torch import nn
from torch.utils.data import Dataset

from encoders.multimodal import DualEncoder
from encoders.text import WordVocab
from encoders.vit import insert_after_last_block
from experiments.objectives import to_device
from experiments.tasks import shape_scenes as scenes
from experiments.tasks.registry import DataError, Task, data_root, register_task
from experiments.tasks.vqa import IMAGE_SIZE, VIT_DIM, VIT_PATCH, image_transform

KS = (1, 5, 10)

# --- the objective ---------------------------------------------------------------------------


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


class ContrastiveRetrieval:
    """Loss on ``(image_emb, text_emb, scale)`` and recall@K validation (module docstring)."""

    def loss(self, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             target: torch.Tensor) -> torch.Tensor:
        image_emb, text_emb, scale = out
        logits = scale * image_emb @ text_emb.T  # (B, B): pair i's image x pair j's caption
        return contrastive_loss(logits, target[:, None] == target[None, :])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, device) -> dict[str, float]:
        """Each image is embedded once (at its first pair), each caption once; ``val_loss``
        is the contrastive loss over the whole validation set (all images x all captions)."""
        model.eval()
        retriever = cast(Retriever, model)
        images: dict[int, torch.Tensor] = {}
        texts, caption_image = [], []
        for (image, ids, mask), target in loader:
            ids, mask = to_device((ids, mask), device)
            texts.append(retriever.embed_text(ids, mask).float().cpu())
            caption_image.append(target)
            new, seen = [], set(images)  # the first pair of each image not embedded yet
            for i, index in enumerate(target.tolist()):
                if index not in seen:
                    seen.add(index)
                    new.append(i)
            if new:
                emb = retriever.embed_image(image[new].to(device)).float().cpu()
                images.update({int(target[i]): e for i, e in zip(new, emb, strict=True)})
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


class CaptionPairs(Dataset):
    """((image, ids, mask), image index) per caption; ``images`` is indexable (a tensor, or a
    dataset that reads and transforms image i)."""

    def __init__(self, images, image_index: torch.Tensor, ids: torch.Tensor,
                 mask: torch.Tensor) -> None:
        self.images, self.image_index, self.ids, self.mask = images, image_index, ids, mask

    def __len__(self) -> int:
        return len(self.image_index)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        index = self.image_index[i]
        return (self.images[int(index)], self.ids[i], self.mask[i]), index


def caption_pairs(images, captions: Sequence[Sequence[str]], vocab: WordVocab,
                  max_len: int) -> CaptionPairs:
    """Pairs for every caption of every image (``captions[i]``: image i's captions)."""
    index = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    encoded = [vocab.encode(c, max_len) for caps in captions for c in caps]
    ids, mask = zip(*encoded, strict=True)
    return CaptionPairs(images, index, torch.stack(ids), torch.stack(mask))


# --- the embedded captioned scenes ---------------------------------------------------------

N_TRAIN, N_VAL, TRAIN_SEED, VAL_SEED = 1500, 200, 21, 22
CAPTION_LEN = 8  # the longest caption has 8 words
CAPTIONS_PER_IMAGE = 2
EMBED_DIM = 64


@cache
def shape_caption_vocab() -> WordVocab:
    """Every word the caption templates can produce (fixed by the templates)."""
    return WordVocab.build(scenes.all_captions())


def shape_retrieval_split(n: int, seed: int, distinct: bool) -> CaptionPairs:
    images, items = scenes.make_captioned(n, seed, distinct=distinct)
    return caption_pairs(torch.from_numpy(images), [it.captions for it in items],
                         shape_caption_vocab(), CAPTION_LEN)


@cache
def _shape_retrieval() -> tuple[CaptionPairs, CaptionPairs]:
    return (shape_retrieval_split(N_TRAIN, TRAIN_SEED, distinct=False),
            shape_retrieval_split(N_VAL, VAL_SEED, distinct=True))


def build_shape_retrieval(data_dir: str | None = None) -> tuple[CaptionPairs, CaptionPairs]:
    """Embedded: ``data_dir`` is not used."""
    return _shape_retrieval()


def shape_retrieval_model(block: nn.Module | None) -> nn.Module:
    """16 image tokens (conv stem, 8x8 cells) or 8 caption tokens per stream, width 64."""
    model = DualEncoder(embed_dim=EMBED_DIM, img_size=scenes.SIZE, patch_size=scenes.PATCH,
                        dim=EMBED_DIM, num_heads=4, visual_depth=1, joint_depth=2,
                        vocab_size=len(shape_caption_vocab()), max_text_len=CAPTION_LEN,
                        mlp_ratio=2.0, conv_stem=True)
    return insert_after_last_block(model, block)


def image_stream_informative(inputs: tuple[torch.Tensor, ...] | list[torch.Tensor]
                             ) -> torch.Tensor:
    """(B, n_patches): patches showing a shape. The probe's hooks keep the model's last pass
    through ``blocks``, the image stream ``[cls, patches]`` (``DualEncoder.forward``)."""
    return scenes.object_patches(inputs[0])


# --- Karpathy splits: Flickr30K and COCO ---------------------------------------------------

MAX_CAPTION_WORDS = 10_000
KARPATHY_CAPTION_LEN = 32
KARPATHY_EMBED_DIM = 256
KARPATHY = {  # task: (JSON file, images under a per-image filepath, nominal val images)
    "flickr30k": ("dataset_flickr30k.json", False, 1000),
    "coco-retrieval": ("dataset_coco.json", True, 5000),
}
TRAIN_SPLITS, VAL_SPLITS = ("train", "restval"), ("val",)


def karpathy_layout(task: str) -> str:
    json_name, filepath, _ = KARPATHY[task]
    where = "images/<filepath>/<filename>" if filepath else "images/<filename>"
    return f"{json_name} (Karpathy split) and the images as {where}"


def karpathy_image(root: Path, task: str, entry: dict) -> Path:
    parts = [entry["filepath"]] if KARPATHY[task][1] else []
    return root.joinpath("images", *parts, entry["filename"])


def karpathy_entries(data_dir: str | Path | None, task: str
                     ) -> tuple[Path, list[dict], list[dict]]:
    """(root, train entries, val entries); DataError naming the layout when it is not there."""
    layout = karpathy_layout(task)
    root = data_root(task, data_dir, layout)
    path = root / KARPATHY[task][0]
    if not path.is_file():
        raise DataError(f"--data-dir {str(data_dir)!r}: no {path.name} for task {task!r}; "
                        f"expected {layout}")
    try:
        images = json.loads(path.read_text())["images"]
        train = [e for e in images if e["split"] in TRAIN_SPLITS]
        val = [e for e in images if e["split"] in VAL_SPLITS]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a Karpathy split file ({e!r}); expected {layout}") from None
    for name, entries in (("train", train), ("val", val)):
        if not entries:
            raise DataError(f"{path}: no {name} images; expected {layout}")
    first = karpathy_image(root, task, val[0])
    if not first.is_file():
        raise DataError(f"{path}: image {str(first)!r} not found; expected {layout}")
    return root, train, val


class ImageFiles(Dataset):
    """Image i of a split, read and resized to 224 when asked for."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.transform = image_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


@cache
def _karpathy(task: str, data_dir: str) -> tuple[CaptionPairs, CaptionPairs]:
    root, train, val = karpathy_entries(data_dir, task)

    def captions(entries: list[dict]) -> list[list[str]]:
        return [[s["raw"] for s in e["sentences"]] for e in entries]

    vocab = WordVocab.build((c for caps in captions(train) for c in caps),
                            max_size=MAX_CAPTION_WORDS)

    def split(entries: list[dict]) -> CaptionPairs:
        files = ImageFiles([karpathy_image(root, task, e) for e in entries])
        return caption_pairs(files, captions(entries), vocab, KARPATHY_CAPTION_LEN)

    return split(train), split(val)


def karpathy_task(task: str):
    def build(data_dir: str | Path | None = None) -> tuple[CaptionPairs, CaptionPairs]:
        karpathy_entries(data_dir, task)
        return _karpathy(task, str(data_dir))

    def check(data_dir: str | Path | None) -> None:
        karpathy_entries(data_dir, task)

    return build, check


def karpathy_model(block: nn.Module | None) -> nn.Module:
    """ViT-S/16 at 224 (10 image-only blocks, 2 shared blocks, then the frozen block), 32
    caption tokens; the word embedding is sized to the vocabulary cap (10,002 ids)."""
    model = DualEncoder(embed_dim=KARPATHY_EMBED_DIM, img_size=IMAGE_SIZE, patch_size=VIT_PATCH,
                        dim=VIT_DIM, num_heads=6, visual_depth=10, joint_depth=2,
                        vocab_size=MAX_CAPTION_WORDS + 2, max_text_len=KARPATHY_CAPTION_LEN)
    return insert_after_last_block(model, block)


register_task(Task(
    name="shape-retrieval",
    description="captioned two-shape scenes (embedded): image <-> caption recall@1/5/10, "
                "dual encoder sharing the frozen block",
    visual_dim=EMBED_DIM,
    build_data=build_shape_retrieval,
    build_model=shape_retrieval_model,
    metric="val_rmean",
    mode="max",
    informative_tokens=image_stream_informative,
    chance=random_rmean([CAPTIONS_PER_IMAGE] * N_VAL),
    objective=CONTRASTIVE,
))

for _task, (_json, _filepath, _n_val) in KARPATHY.items():
    _build, _check = karpathy_task(_task)
    register_task(Task(
        name=_task,
        description=f"{_task} Karpathy split at 224, ViT-S/16 width, dual encoder sharing the "
                    "frozen block",
        visual_dim=VIT_DIM,
        build_data=_build,
        build_model=karpathy_model,
        metric="val_rmean",
        mode="max",
        check_data=_check,
        chance=random_rmean([5] * _n_val),  # 5 captions per val image (nominal)
        objective=CONTRASTIVE,
    ))
