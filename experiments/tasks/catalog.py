"""Every shipped task as plain data: its name, the module that registers it and what the plan
reads before anything is built (the metric a sweep optimises, classification or not, whether
its data ships with lmblocks, and what a sample costs its model, for the dry run's estimate).

This table is the registration: ``get_task(name)`` imports the task's module on first use, so
planning a sweep (and answering a bad flag) imports neither torch nor timm, and a trial
imports only its own task's model code. ``register_task`` checks that the module's ``Task``
agrees with its row here (and that its cost row has the task's token width), so the two
cannot drift apart. A new task: one module that calls ``register_task``, plus one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from encoders.lm.registry import DuplicateNameError


@dataclass(frozen=True)
class TaskCost:
    """What a sample costs the task's model at its default data, for the dry run's analytic
    estimate (``experiments.cost_model``); ``tests/test_cost_estimate.py`` recounts the model
    numbers from the model itself (FlopCounterMode, and a probe in the block's place).
    """

    # Forward GFLOPs per sample of the task's model without a block (the ``none`` control),
    # as torch.utils.flop_counter.FlopCounterMode counts it: matmuls, convolutions, attention.
    encoder_gflops: float
    # Tokens of each sequence the inserted block runs over, per sample: one sequence, or two
    # for the dual encoders (the caption stream, then the image stream).
    sequences: tuple[int, ...]
    width: int  # token width at the insertion point (``Task.visual_dim``): sizes the adapters
    train_samples: int  # training samples per epoch (what the task's training set iterates)
    # Validation forward passes per epoch: the validation set's samples (the retrieval tasks:
    # its distinct images, each with one caption's cost; their other captions are left out).
    val_samples: int

    @property
    def tokens(self) -> int:
        """Tokens the block sees per sample, every sequence together."""
        return sum(self.sequences)


@dataclass(frozen=True)
class TaskEntry:
    name: str
    module: str  # the module whose import registers the task
    metric: str = "val_acc"
    mode: str = "max"
    classification: bool = True  # the classification objective (label smoothing, Mixup apply)
    embedded: bool = True  # its data ships with lmblocks (no --data-dir)
    # its encoder is a timm model: --encoder-weights and --encoder-train apply to it
    timm_encoder: bool = False
    # the sweep chooses its encoder: --encoder (a timm model name) and --image-size
    chooses_encoder: bool = False
    # Not part of what ``register_task`` compares with the module's ``Task`` (which does not
    # know it); None: the dry run has no estimate for the task.
    cost: TaskCost | None = field(default=None, compare=False, repr=False)


# Where the cost numbers come from. encoder_gflops, sequences and width: the task's model
# (its module's builder) counted once with FlopCounterMode on the meta device at the shapes
# its data has (tests/test_cost_estimate.py recounts them). Samples of the embedded tasks:
# their generators' sizes (len() of the task's build_data() train and validation sets). Of
# the real-data tasks: the datasets' public split sizes, as the task module iterates them
# (questions for VQA, caption pairs for retrieval, clips for video), at the layouts the
# docs (Running sweeps: Tasks) name.
_T = "experiments.tasks."
CATALOG: dict[str, TaskEntry] = {e.name: e for e in (
    # scikit-learn digits: 1,797 images, 80/20 stratified split; ViT 64 wide, 16 patches + cls
    TaskEntry("digits", _T + "digits", timm_encoder=True,
              cost=TaskCost(0.00239, (17,), 64, 1437, 360)),
    TaskEntry("digits-convstem", _T + "digits", timm_encoder=True,
              cost=TaskCost(0.00277, (17,), 64, 1437, 360)),
    # 150 / 40 clouds per class, 6 classes; 16 point patches + cls
    TaskEntry("shapes3d", _T + "pointcloud", cost=TaskCost(0.0489, (17,), 64, 900, 240)),
    # ModelNet40's h5 split: 9,843 train / 2,468 test clouds at 1024 points; 64 patches + cls
    TaskEntry("modelnet40", _T + "pointcloud", embedded=False,
              cost=TaskCost(0.197, (65,), 64, 9843, 2468)),
    # ScanObjectNN main split, PB_T50_RS (the "augmented" h5 the task reads first): 11,416 /
    # 2,882
    TaskEntry("scanobjectnn", _T + "pointcloud", embedded=False,
              cost=TaskCost(0.197, (65,), 64, 11416, 2882)),
    # 1,600 / 400 clips of 8 frames at 16x16, tubes 2x4x4: 64 tokens + cls
    TaskEntry("moving-digits", _T + "video", cost=TaskCost(0.0109, (65,), 64, 1600, 400)),
    # SSv2: 168,913 train / 24,777 validation clips; 16 frames at 224, tubes 2x16x16: 1,568 +
    # cls, ViT-S
    TaskEntry("ssv2", _T + "video", embedded=False,
              cost=TaskCost(113.9, (1569,), 384, 168913, 24777)),
    # Kinetics-400: about 240,000 training clips still downloadable (the 2017 release listed
    # 246,245; mirrors differ) and 20,000 validation (50 per class)
    TaskEntry("kinetics400", _T + "video", embedded=False,
              cost=TaskCost(113.9, (1569,), 384, 240000, 20000)),
    # 1,600 / 400 scenes of 16 polylines (no cls)
    TaskEntry("road-graphs", _T + "forecasting", "val_minADE", "min", classification=False,
              cost=TaskCost(0.00463, (16,), 64, 1600, 400)),
    # Argoverse 1 motion forecasting: 205,942 train / 39,472 val sequences; 64 polylines
    TaskEntry("argoverse", _T + "forecasting", "val_minADE", "min", classification=False,
              embedded=False, cost=TaskCost(0.0917, (64,), 128, 205942, 39472)),
    # 2,800 / 700 questions; cls + 16 image tokens + 10 words
    TaskEntry("shape-vqa", _T + "vqa", classification=False,
              cost=TaskCost(0.00703, (27,), 64, 2800, 700)),
    # VQAv2: 443,757 train / 214,354 val questions; cls + 196 patches + 20 words, ViT-S/16
    TaskEntry("vqav2", _T + "vqa", classification=False, embedded=False,
              cost=TaskCost(9.33, (217,), 384, 443757, 214354)),
    # 1,500 scenes x 2 captions = 3,000 training pairs, 200 validation images; streams: cls + 8
    # words, cls + 16 image tokens
    TaskEntry("shape-retrieval", _T + "retrieval", "val_rmean", classification=False,
              cost=TaskCost(0.00671, (9, 17), 64, 3000, 200)),
    # Flickr30K Karpathy split: 29,000 images x 5 captions = 145,000 pairs, 1,014 val images;
    # streams: cls + 32 words, cls + 196 patches (ViT-S/16)
    TaskEntry("flickr30k", _T + "retrieval", "val_rmean", classification=False,
              embedded=False, cost=TaskCost(9.39, (33, 197), 384, 145000, 1014)),
    # COCO Karpathy split: train + restval 113,287 images x 5 captions = 566,435 pairs (the
    # file holds a few more), 5,000 val images
    TaskEntry("coco-retrieval", _T + "retrieval", "val_rmean", classification=False,
              embedded=False, cost=TaskCost(9.39, (33, 197), 384, 566435, 5000)),
    # 250 / 200 rooms x 6 questions each; cls + 16 point patches + 12 words
    TaskEntry("shape-scenes-3d", _T + "vqa3d", classification=False,
              cost=TaskCost(0.0519, (29,), 64, 1500, 1200)),
    # ScanQA v1.0: 25,563 train / 4,675 val questions; cls + 64 point patches + 48 words
    TaskEntry("scanqa", _T + "vqa3d", classification=False, embedded=False,
              cost=TaskCost(0.213, (113,), 64, 25563, 4675)),
    # CIFAR-10/100: 50,000 / 10,000 images at 32x32, 4x4 patches: 64 + cls, ViT-Ti width
    TaskEntry("cifar10", _T + "images", embedded=False, timm_encoder=True,
              cost=TaskCost(0.730, (65,), 192, 50000, 10000)),
    TaskEntry("cifar100", _T + "images", embedded=False, timm_encoder=True,
              cost=TaskCost(0.730, (65,), 192, 50000, 10000)),
    # ImageNet-1k: 1,281,167 train / 50,000 val images at 224: 196 patches + cls
    TaskEntry("imagenet-vit-tiny", _T + "images", embedded=False, timm_encoder=True,
              cost=TaskCost(2.51, (197,), 192, 1281167, 50000)),
    TaskEntry("imagenet-vit-small", _T + "images", embedded=False, timm_encoder=True,
              cost=TaskCost(9.20, (197,), 384, 1281167, 50000)),
    # Any timm ViT-like model (--encoder) on any ImageFolder tree: sizes known only then
    TaskEntry("images", _T + "images", embedded=False, timm_encoder=True,
              chooses_encoder=True),
)}

# lmblocks' own rows: a plugin's row may not take one of these names (nor another plugin's).
BUILTIN_TASKS = frozenset(CATALOG)


def register_catalog_row(entry: TaskEntry) -> TaskEntry:
    """Add a plugin's task row, plain data as the built-ins' above: the plan reads it without
    importing ``entry.module``, which ``get_task`` imports when a trial (or the plugin check
    before a sweep) needs the task. A name already in the catalog is refused."""
    if entry.name in CATALOG:
        owner = "lmblocks" if entry.name in BUILTIN_TASKS else CATALOG[entry.name].module
        raise DuplicateNameError("task", entry.name,
                                 f"task {entry.name!r} is already in the catalog ({owner})")
    CATALOG[entry.name] = entry
    return entry
