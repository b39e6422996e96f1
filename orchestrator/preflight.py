"""Pre-flight: what a sweep needs from outside its plan, checked before Ray starts.

The data every task reads, the tracking store's scheme, the storage folder, and the weights
of every planned pretrained layer: the checkpoint is found, its config has the registry's
architecture, and the headers (not the data) of the files holding each planned layer list
every tensor its layer class expects, with its shape. Each failure is a ``SpecError``: one
line, exit 2, before anything starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.spec import SpecError, SweepSpec

TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql",
                    "databricks", "databricks-uc")


def check_tracking_uri(uri: str | None, source: str = "--tracking-uri") -> None:
    """A scheme MLflow can store to (or a plain path: a file store), named before anything
    starts; MLflow itself raises its own exception deep in the sweep otherwise. ``source``:
    what named the URI (the flag, or the MLFLOW_TRACKING_URI environment variable)."""
    if uri is None:
        return
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise SpecError(f"unknown {source} scheme {scheme!r} in {uri!r}; valid: "
                        f"{', '.join(TRACKING_SCHEMES)} (or a folder path)")
    if uri.startswith("sqlite:///"):
        check_sqlite_file(uri)


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(uri: str) -> None:
    """A SQLite store's file, checked before MLflow touches it: MLflow retries an unopenable
    database for minutes before failing with a long traceback. The file must be a readable,
    writable SQLite database (or empty), or be creatable in a writable folder."""
    db = Path(uri.removeprefix("sqlite:///"))
    db = db if db.is_absolute() else Path.cwd() / db
    fix = "valid: a SQLite database file, or a new file in a writable folder"
    if db.exists():
        if not db.is_file():
            raise SpecError(f"MLflow store {uri!r}: {db} is not a file; {fix}")
        if not os.access(db, os.R_OK | os.W_OK):
            raise SpecError(f"MLflow store {uri!r}: {db} is not readable and writable; {fix}")
        with open(db, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise SpecError(f"MLflow store {uri!r}: {db} is not a SQLite database; {fix} "
                            "(move the file aside)")
        return
    parent = next(p for p in db.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(f"MLflow store {uri!r} cannot be created ({parent} is not a writable "
                        f"folder); {fix}")


def check_storage(storage: str | None) -> None:
    """--storage: a URL Ray handles (s3://, gs://, ...), or a directory that exists or can be
    created (its nearest existing ancestor is a writable directory)."""
    if storage is None or "://" in storage:
        return
    path = Path(storage).resolve()
    if path.exists():
        if not path.is_dir():
            raise SpecError(f"--storage {storage!r} is not a directory")
        return
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise SpecError(f"--storage {storage!r} cannot be created ({parent} is not a "
                        "writable directory)")


def preflight_data(plan, data_dir: str | None) -> None:
    """Every task's data must be where --data-dir says (embedded tasks need none, and are not
    even imported: their check is a no-op)."""
    from experiments.tasks.registry import get_task, task_entry

    names = [n for n in dict.fromkeys(t.task for t in plan) if not task_entry(n).embedded]
    if not names:
        return
    from experiments.datasets.base import DataError

    for name in names:
        try:
            get_task(name).check_data(data_dir)
        except DataError as e:
            raise SpecError(str(e)) from None


def preflight_encoder(spec: SweepSpec, data_dir: str | None) -> SweepSpec:
    """``--encoder``, ``--image-size`` and ``--encoder-weights`` as timm and the file say, for
    every task of the sweep: the model built on the meta device, the file's header (not its
    data) unwrapped and fitted to it as a trial will. Returns ``spec`` with the file's path
    made absolute (trials run elsewhere) and its sha256 filled in: the identity every cell's
    key holds. Without those flags nothing is checked, and nothing imported."""
    if not (spec.encoder or spec.encoder_weights or spec.image_size):
        return spec
    from encoders.visual.timm_encoder import EncoderChoiceError
    from encoders.visual.timm_weights import file_sha256
    from encoders.weights.checkpoint_dir import is_url
    from experiments.datasets.base import DataError
    from experiments.encoder_choice import check_encoder_choice
    from experiments.trial import EncoderChoice

    weights = spec.encoder_weights
    if weights and not is_url(weights):
        if not Path(weights).is_file():
            raise SpecError(f"--encoder-weights {weights!r}: no such file; valid: a "
                            "safetensors file or a torch.save state dict, or an fsspec URL")
        weights = str(Path(weights).resolve())
    choice = EncoderChoice(spec.encoder, weights, "", "full", spec.image_size)
    try:
        for task in dict.fromkeys(spec.tasks):
            check_encoder_choice(task, choice, data_dir, spec.controls)
        sha = file_sha256(weights) if weights else ""
    except (EncoderChoiceError, DataError) as e:
        raise SpecError(_one_line(e)) from None
    if spec.encoder_checkpoint and spec.encoder_checkpoint != sha:
        raise SpecError(f"--encoder-weights {weights!r}: sha256 {sha[:12]}..., but the preset "
                        f"names encoder_checkpoint {spec.encoder_checkpoint[:12]}...; valid: "
                        "the file the preset was written for, or no encoder_checkpoint")
    return spec.replace(encoder_weights=weights, encoder_checkpoint=sha)


def planned_weights(plan) -> dict[tuple[str, str], tuple[list[int], bool]]:
    """(family, size) -> (every layer a pretrained trial of it reads, whether one reads the
    final norm): one check per checkpoint, however many trials share it."""
    layers: dict[tuple[str, str], set[int]] = {}
    norms: dict[tuple[str, str], bool] = {}
    for t in plan:
        if t.weights_source == "pretrained":
            key = (t.family, t.size)
            layers.setdefault(key, set()).update(t.layers)
            norms[key] = norms.get(key, False) or t.hparams.final_norm == "lm"
    return {key: (sorted(ls), norms[key]) for key, ls in layers.items()}


def preflight_weights(plan, weights_dir: str | None) -> None:
    """Every checkpoint a pretrained trial reads: found, its config has the registry's
    architecture, and each planned layer's tensors are in the headers of the files that
    hold it, shaped as its layer class expects. Headers only: each file's is read once,
    files holding no planned layer are not opened, no tensor data is read. What a trial
    actually loads is recorded by the trial."""
    from encoders.lm.lookup import check_checkpoint

    if weights_dir is not None and "://" not in weights_dir and not Path(weights_dir).exists():
        raise SpecError(f"--weights-dir {weights_dir!r} does not exist; valid: a folder of "
                        "checkpoints, a GGUF file (e.g. an Ollama blob) or an fsspec URL")
    for (family, size), (layers, final_norm) in planned_weights(plan).items():
        try:
            check_checkpoint(family, size, weights_dir, layers, final_norm=final_norm)
        except (OSError, ValueError) as e:  # FileNotFoundError, CheckpointFormatError, ...
            raise SpecError(_one_line(e)) from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
