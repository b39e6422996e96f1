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
AXES = ("family", "size", "layers", "task", "control", "seed")

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


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 12
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 32
    compute_dtype: str = "auto"  # the block's compute dtype: auto = float32 on CPU, bf16 on GPU
    final_norm: bool = False  # the LM's final norm follows the block (off: the paper's setup)
    adapter_init: str = "default"  # the two linear maps: default (Kaiming), xavier, orthogonal
    schedule: str = "constant"  # learning rate after warm-up: constant or cosine
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Mixup alpha (0: off); with cutmix, timm's Mixup draws one per batch
    cutmix: float = 0.0  # CutMix alpha (0: off; image tasks)
    # How fast, not what: the two below change no result (samples are seeded per index, not
    # per worker; compiled and eager agree within float tolerance), so they are left out of
    # a trial's key: a cell finished with 0 workers is not run again with 8.
    num_workers: str = "auto"  # DataLoader workers: auto (from the trial's CPUs) or a count
    compile: bool = False  # the model (visual encoder + block) under torch.compile

    def __post_init__(self) -> None:  # a YAML preset or MLflow may give 4 or "4": one form
        object.__setattr__(self, "num_workers", str(self.num_workers))


HPARAMS = tuple(f.name for f in dataclasses.fields(Hyperparameters))
RUNTIME_HPARAMS = ("num_workers", "compile")  # recorded, but not part of a trial's identity


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
            "task": self.task,
            "control": self.control,
            "seed": self.seed,
        }
        cfg.update(dataclasses.asdict(self.hparams))
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, object]) -> TrialSpec:
        hp = {name: cfg[name] for name in HPARAMS if name in cfg}
        for flag in ("final_norm", "compile"):  # MLflow/Optuna round trips give strings
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
        )

    @property
    def key(self) -> str:
        """Stable identity of the full config but its runtime settings (``RUNTIME_HPARAMS``):
        a finished cell is not run again."""
        cfg = {k: v for k, v in self.to_config().items() if k not in RUNTIME_HPARAMS}
        blob = json.dumps(cfg, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        """How the trial's run and folder are named: ``minilm-l6-L5-pretrained-digits-s0``."""
        from encoders.lm.controls import get_control

        if not get_control(self.control).per_lm:
            return f"{self.control}-{self.task}-s{self.seed}"
        layer = f"-L{self.layer_label}" if self.layers else ""
        return f"{self.family}-{self.size}{layer}-{self.control}-{self.task}-s{self.seed}"
