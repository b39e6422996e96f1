"""Which folder holds a family/size's checkpoint, and whether it is the one the registry says.

``--weights-dir`` may also name a single-file checkpoint (a GGUF file, an Ollama blob): the
format whose marker it is reads it.

Lookup order: ``--weights-dir`` (a local folder or any fsspec URL), the family's own location
(a package), the local Hugging Face cache, then the hub through huggingface_hub's filesystem
(``hf://``) when online. Offline and not cached, the error says how to provide the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from encoders.lm.formats import WeightFormat
from encoders.lm.layer_loading import check_layers
from encoders.lm.registry import LMFamily, LMSize, get_family
from encoders.weights.checkpoint_dir import CheckpointDir, hub_reachable, is_url
from encoders.weights.safetensors_reader import SafetensorsReader
from encoders.weights.tensors import CheckpointFormatError


class WeightsNotFoundError(FileNotFoundError):
    """No copy of a checkpoint anywhere we may look; the message says what to do."""


def weights_dir_candidates(weights_dir: str, size: LMSize) -> list[str]:
    """``DIR/facebook/opt-125m``, ``DIR/opt-125m`` and ``DIR`` itself, in that order."""
    base = str(weights_dir).rstrip("/")
    return [f"{base}/{size.repo_id}", f"{base}/{size.repo_id.split('/')[-1]}", base]


def locate(
    family: LMFamily, size: LMSize, weights_dir: str | Path | None = None
) -> CheckpointDir:
    if weights_dir is not None:
        root = str(weights_dir).rstrip("/")
        for cand in weights_dir_candidates(root, size):
            ckpt = CheckpointDir(cand if is_url(cand) else Path(cand).resolve(), "weights-dir",
                                 size.repo_id)
            fmt = next((f for f in family.weight_formats if f.present(ckpt)), None)
            if fmt and (cand != root or _config_matches(family, ckpt, fmt, size)):
                return ckpt
    if family.locate is not None:
        return CheckpointDir(Path(family.locate(size)), "package", size.repo_id)
    cached = try_to_load_from_cache(size.repo_id, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        fallback = f"hf://{size.repo_id}@{snapshot.name}" if hub_reachable() else None
        return CheckpointDir(snapshot, "hf-cache", size.repo_id, snapshot.name, fallback)
    if hub_reachable():
        return CheckpointDir(f"hf://{size.repo_id}", "hub", size.repo_id, "main")
    where = f"--weights-dir {weights_dir}, " if weights_dir else ""
    raise WeightsNotFoundError(
        f"weights for {size.repo_id} not found ({where}Hugging Face cache {constants.HF_HUB_CACHE}) "
        f"and the hub is unreachable: put the checkpoint in DIR/{size.repo_id} "
        f"(config.json + *.safetensors) and pass --weights-dir DIR, or run "
        f"`hf download {size.repo_id}` on a machine that is online"
    )


def _config_matches(family: LMFamily, ckpt: CheckpointDir, fmt: WeightFormat,
                    size: LMSize) -> bool:
    """``DIR`` itself is only taken when its config is this size (not a sibling size)."""
    try:
        config = fmt.load_config(family, ckpt)
    except (CheckpointFormatError, ValueError):
        return False
    return (config.hidden_size == size.hidden_size
            and config.num_hidden_layers == size.num_layers)


def check_checkpoint(
    family: str,
    size: str,
    weights_dir: str | Path | None,
    layers: Sequence[int] = (),
    *,
    final_norm: bool = False,
    reader: SafetensorsReader | None = None,
) -> str:
    """Cheap pre-flight: found; its config has the registry's architecture (every number,
    ``LMFamily.check_config``); and, for ``layers`` (and the final norm), the headers of the
    files holding them list every tensor the layer class expects with its shape: headers
    only, each read once, no tensor data. Returns where it was found (repo@revision), for
    messages; the run records what the trial loads."""
    fam = get_family(family)
    lm = fam.size(size)
    checkpoint = locate(fam, lm, weights_dir)
    check_layers(fam, checkpoint, sorted(set(layers)), final_norm=final_norm, size=lm,
                 reader=reader or SafetensorsReader(checkpoint.open))
    return checkpoint.identity
