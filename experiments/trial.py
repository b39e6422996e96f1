"""A trial's own types: what one trial is (``TrialSpec``), its hyperparameters, its axes.

A trial is a frozen dataclass; it becomes a flat dict only at the Ray and MLflow boundary
(``to_config``/``from_config``). Everything above (the plan, the searchers, tracking, the
report) reads the axes and hyperparameter names from here rather than retyping them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

# The structural axes of a sweep: one trial per combination (a plan row, a report cell + seed).
AXES = ("family", "size", "layers", "position", "task", "control", "seed")
# Where the inserted module runs in the encoder (``encoders.visual.placement``): ``end`` is
# every cell's place from before the axis existed, and is left out of a trial's key.
DEFAULT_POSITION = "end"

Selection = tuple[int, ...]  # the LM layers a trial inserts, as one block


def label(selection: Selection) -> str:
    """``(5,)`` -> ``"5"``; ``(3, 4)`` -> ``"3:5"``; ``()`` -> ``""`` (no LM layer)."""
    if not selection:
        return ""
    if len(selection) == 1:
        return str(selection[0])
    return f"{selection[0]}:{selection[-1] + 1}"


def parse_label(text: str) -> Selection:
    if not text:
        return ()
    if ":" in text:
        a, b = (int(v) for v in text.split(":"))
        return tuple(range(a, b))
    return (int(text),)


# The choices of the hyperparameters that name one, as plain data: the plan validates a sweep
# against them without importing torch (``experiments.compute``, ``experiments.recipe`` and
# ``experiments.loading`` act on them).
DTYPES = ("auto", "float32", "bfloat16", "float16")  # compute_dtype
SCHEDULES = ("constant", "cosine")  # schedule: the lr after warm-up
AUTO_WORKERS = "auto"  # num_workers: chosen per device and dataset (experiments.loading)
AUTO_MICRO_BATCH = "auto"  # micro_batch: what fits the GPU (experiments.memory_model)


def check_num_workers(setting: object) -> None:
    """Raise ValueError naming the bad value and the valid ones (the plan's pre-flight)."""
    if str(setting) == AUTO_WORKERS:
        return
    try:
        if int(str(setting)) >= 0:
            return
    except ValueError:
        pass
    raise ValueError(f"bad num_workers {setting!r}; valid: auto or an integer >= 0")


def check_micro_batch(setting: object, batch_size: int, multiple_of: int = 1) -> None:
    """Raise ValueError naming the bad value and the valid ones (the plan's pre-flight): a
    micro-batch divides the global batch (every step the same k equal micro-batches), and is
    even where Mixup/CutMix mix each one (``multiple_of`` 2)."""
    if str(setting) == AUTO_MICRO_BATCH:
        return
    try:
        micro = int(str(setting))
    except ValueError:
        micro = 0
    if micro > 0 and batch_size % micro == 0 and micro % multiple_of == 0:
        return
    even = " and even (Mixup/CutMix mix each micro-batch)" if multiple_of == 2 else ""
    raise ValueError(f"bad micro_batch {setting!r} for batch_size {batch_size}; valid: auto "
                     f"or a divisor of {batch_size}{even}")


# ``final_norm`` was a bool: a preset's true/false and an older run's "True"/"False" read as
LEGACY_FINAL_NORM = {True: "lm", False: "none", "True": "lm", "False": "none"}


def final_norm_choice(value: object) -> object:
    """``final_norm`` as one of none/unit-rms/lm (legacy booleans mapped); anything else is
    returned as given, for the plan to reject with the valid choices."""
    if isinstance(value, bool | str) and value in LEGACY_FINAL_NORM:
        return LEGACY_FINAL_NORM[value]
    return value


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 12
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 32
    compute_dtype: str = "auto"  # the block's compute dtype: auto = float32 on CPU, bf16 on GPU
    # after the LM layers: none (lmblocks' default), unit-rms (the official code's gain-1
    # RMSNorm, eps 1e-6, float32 out) or lm (the LM's own trained final norm); a legacy
    # true/false reads as lm/none
    final_norm: str = "none"
    adapter_init: str = "default"  # the two linear maps: default (Kaiming), xavier, orthogonal
    schedule: str = "constant"  # learning rate after warm-up: constant or cosine
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Mixup alpha (0: off); with cutmix, timm's Mixup draws one per batch
    cutmix: float = 0.0  # CutMix alpha (0: off; image tasks)
    # The recipe's optimizer groups and regularisers (experiments/param_groups.py,
    # experiments/regularisation.py); every one recorded on every run, 0 or 1 = off/neutral.
    adapter_lr_scale: float = 1.0  # the two linear maps' lr, x lr
    adapter_decay: bool = True  # weight decay on the linear maps (official point cloud: off)
    lm_lr_scale: float = 1.0  # the LM layers' lr when a control trains them, x lr
    norm_lr_scale: float = 1.0  # lr of the encoder's non-decayed params (1-D, biases, tokens)
    size_lr_scale: float = 1.0  # set by the plan from a preset's lr_scale_by_size
    clip_grad: float = 0.0  # max global grad norm (0: off)
    drop_path: float = 0.0  # stochastic depth of the encoder's timm blocks, 0 -> this rate
    ema_decay: float = 0.0  # timm ModelEmaV3 of the weights, evaluated alongside (0: off)
    repeated_aug: int = 0  # repeated augmentation: each sampled image this many times (0/1: off)
    aux_weight: float = 1.0  # the auxiliary control's branch loss, x the task's (Bai et al.)
    # --epochs auto:MAX: stop when the claims' plateau rule says converged, at most ``epochs``
    auto_epochs: bool = False
    # How fast, not what: the two below change no result (samples are seeded per index, not
    # per worker; compiled and eager agree within float tolerance), so they are left out of
    # a trial's key: a cell finished with 0 workers is not run again with 8.
    num_workers: str = "auto"  # DataLoader workers: auto (from the trial's CPUs) or a count
    compile: bool = False  # the model (visual encoder + block) under torch.compile
    # Samples per forward: batch_size is the global batch, split into batch_size/micro_batch
    # micro-batches per optimizer step (experiments/accumulation.py); auto: what fits the GPU
    # (the whole batch on a CPU). Out of the key like the two above: where a model's samples
    # do not meet in the forward the step is the same (a run records when they do).
    micro_batch: str = "auto"

    def __post_init__(self) -> None:  # a YAML preset or MLflow may give 4 or "4": one form
        object.__setattr__(self, "num_workers", str(self.num_workers))
        object.__setattr__(self, "micro_batch", str(self.micro_batch))
        object.__setattr__(self, "final_norm", final_norm_choice(self.final_norm))


HPARAMS = tuple(f.name for f in dataclasses.fields(Hyperparameters))
# recorded, but not part of a trial's identity
RUNTIME_HPARAMS = ("num_workers", "compile", "micro_batch")
# Hyperparameters added after sweeps were recorded, at the value that trains exactly as before
# they existed: left out of a trial's key at that value, so a cell an older sweep finished is
# still found finished (and not run again).
NEUTRAL_HPARAMS: dict[str, object] = {
    "adapter_lr_scale": 1.0, "adapter_decay": True, "lm_lr_scale": 1.0, "norm_lr_scale": 1.0,
    "size_lr_scale": 1.0, "clip_grad": 0.0, "drop_path": 0.0, "ema_decay": 0.0,
    "repeated_aug": 0, "aux_weight": 1.0, "auto_epochs": False,
}
# final_norm was a bool in the key: none/lm keep the key they had as false/true
KEY_FINAL_NORM = {"none": False, "lm": True}


ENCODER_TRAIN = ("full", "frozen")  # encoder_train: the encoder's own weights train, or not


@dataclass(frozen=True)
class EncoderChoice:
    """The visual encoder's own settings, for the tasks whose encoder is a timm model: which
    model (the ``images`` task: any timm model with a ``blocks`` sequence), its starting
    weights (a file; its sha256 is the identity, not its path) and whether they train.
    Every default is how a trial ran before these existed, and is left out of the key."""

    name: str = ""  # a timm model name (the ``images`` task); "": the task's own encoder
    weights: str = ""  # the file or fsspec URL its weights are read from; "": from scratch
    checkpoint: str = ""  # that file's sha256 (``encoder.checkpoint``)
    train: str = "full"  # full: the encoder trains; frozen: only adapters, head, control
    image_size: int = 0  # input size; 0: the model's pretrained_cfg (the task's own)

    @property
    def label(self) -> str:
        """What sets the encoder apart from the task's own, in words ("" when nothing):
        the report names such a task ``images[deit_small_patch16_224 64px 3f2a91c0 frozen]``."""
        parts = [self.name, f"{self.image_size}px" if self.image_size else "",
                 self.checkpoint[:8], "frozen" if self.train == "frozen" else ""]
        return " ".join(p for p in parts if p)


# config key -> EncoderChoice field; what a trial's key leaves out: the file's location (its
# sha256 is the identity), and every field at its default (cells from before keep their key)
ENCODER_CONFIG = {"encoder": "name", "encoder_weights": "weights",
                  "encoder_checkpoint": "checkpoint", "encoder_train": "train",
                  "image_size": "image_size"}
ENCODER_DEFAULTS = {k: getattr(EncoderChoice(), f) for k, f in ENCODER_CONFIG.items()}


def task_label(task: str, encoder: EncoderChoice) -> str:
    """The report's name for a task run with ``encoder`` (``task`` alone with its own)."""
    return f"{task}[{encoder.label}]" if encoder.label else task


def task_of_label(label: str) -> str:
    """The registered task a report's task label names (``images[...]`` -> ``images``)."""
    return label.split("[", 1)[0]


@dataclass(frozen=True)
class TrialSpec:
    """One trial, fully resolved; a dict only at the Ray/MLflow boundary."""

    family: str
    size: str
    layers: Selection
    task: str
    control: str
    seed: int
    hparams: Hyperparameters = field(default_factory=Hyperparameters)
    encoder: EncoderChoice = field(default_factory=EncoderChoice)
    position: str = DEFAULT_POSITION  # a named place (encoders.visual.placement.name_of)

    @property
    def layer_label(self) -> str:
        return label(self.layers)

    @property
    def weights_source(self) -> str:
        # imported here: the controls table pulls in torch and transformers, which a trial's
        # type (read by the CLI's argument parsing) does not need until it is asked
        from encoders.lm.controls import get_control

        return get_control(self.control).weights_source

    def to_config(self) -> dict[str, object]:
        """Flat, JSON-able config: Ray Tune's trial config and MLflow's params."""
        cfg = {
            "family": self.family,
            "size": self.size,
            "layers": self.layer_label,
            "position": self.position,
            "task": self.task,
            "control": self.control,
            "seed": self.seed,
        }
        cfg.update(dataclasses.asdict(self.hparams))
        cfg.update({k: getattr(self.encoder, f) for k, f in ENCODER_CONFIG.items()})
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, object]) -> TrialSpec:
        hp = {name: cfg[name] for name in HPARAMS if name in cfg}
        for flag in ("compile", "adapter_decay", "auto_epochs"):  # round trips give strings
            if isinstance(hp.get(flag), str):
                hp[flag] = hp[flag] == "True"
        return cls(
            family=str(cfg["family"]),
            size=str(cfg["size"]),
            layers=parse_label(str(cfg["layers"])),
            task=str(cfg["task"]),
            control=str(cfg["control"]),
            seed=int(cfg["seed"]),
            hparams=Hyperparameters(**hp),
            encoder=EncoderChoice(**{
                f: (int(cfg[k]) if f == "image_size" else str(cfg[k]))
                for k, f in ENCODER_CONFIG.items()
                if k in cfg and cfg[k] not in (None, "none")}),
            position=str(cfg.get("position") or DEFAULT_POSITION),
        )

    @property
    def key(self) -> str:
        """Stable identity of the full config but its runtime settings (``RUNTIME_HPARAMS``)
        and where the encoder's weights file lies (its sha256 is in): a finished cell is not
        run again. The position ``end`` is left out: cells from before the axis keep their
        key."""
        cfg = {k: v for k, v in self.to_config().items() if k not in RUNTIME_HPARAMS
               and not (k in NEUTRAL_HPARAMS and v == NEUTRAL_HPARAMS[k])
               and not (k in ENCODER_DEFAULTS and v == ENCODER_DEFAULTS[k])
               and k != "encoder_weights"
               and not (k == "position" and v == DEFAULT_POSITION)}
        cfg["final_norm"] = KEY_FINAL_NORM.get(cfg["final_norm"], cfg["final_norm"])
        blob = json.dumps(cfg, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        """How the trial's run and folder are named: ``minilm-l6-L5-pretrained-digits-s0``
        (``...-L5-at-middle-pretrained-...`` away from the end)."""
        from encoders.lm.controls import get_control

        task = self.task + (f"-{self.encoder.name}" if self.encoder.name else "") + (
            "-frozen" if self.encoder.train == "frozen" else "")
        if not get_control(self.control).per_lm:
            return f"{self.control}-{task}-s{self.seed}"
        layer = (f"-L{self.layer_label}" if self.layers else "") + (
            f"-at-{self.position}" if self.position != DEFAULT_POSITION else "")
        return f"{self.family}-{self.size}{layer}-{self.control}-{task}-s{self.seed}"


def rank_trial(trial: TrialSpec, world: int) -> TrialSpec:
    """The trial as one rank runs it: its share of the global batch (what ``--micro-batch
    auto`` must fit on the rank's GPU)."""
    if world == 1:
        return trial
    return dataclasses.replace(trial, hparams=dataclasses.replace(trial.hparams,
                                          batch_size=trial.hparams.batch_size // world))
