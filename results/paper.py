"""The paper's numbers as data, and the paper's rows set beside a sweep's cells.

``paper_numbers.csv`` (package data, next to this module) holds every number of Pang et al.,
"Frozen Transformers in Language Models Are Effective Visual Encoder Layers" (ICLR 2024,
arXiv 2310.12973, camera-ready) that the project's notes transcribe: Tables 1-4, 5a, 5b, 6,
A, B, C and D, one row per number, long format:

- ``table``: 1, 2, 3, 4, 5a, 5b, 6, A, B, C, D;
- ``task``: the kind of task (``TASK_KINDS``), ``dataset`` (ImageNet, ImageNet-C,
  ScanObjectNN-BG, ModelNet40-1k, SSv2, Argoverse, VQAv2, Flickr30k, SQA3D, ...) and
  ``model``, the paper's visual model (ViT-S, Point-BERT, VectorNet, METER, ScanQA, ...);
- ``family``/``size``: the LM in lmblocks' names (LLaMA-7B, LLaMA v1, is ``llama``/``1-7b``;
  OPT-125M is ``opt``/``125m``), empty where the arm has no LM;
- ``control``: lmblocks' control names: ``none`` (baseline), ``pretrained`` (+LLaMA, frozen),
  and the capacity controls of ``encoders/lm/controls.py``: ``mlp`` (Linear -> GELU ->
  LayerNorm -> Linear in place of the block), ``random-trained`` (a LLaMA-7B-shaped block randomly
  initialised and TRAINED; lmblocks' ``random`` is frozen, so it is not this arm) and
  ``finetuned`` (the LLaMA block fine-tuned);
- ``layers``: which LM layer(s): ``last``, ``last2`` (the last two as one block), or empty
  (no LM, or a block whose weights are not an LM layer); ``position``: where the block sits
  in the visual encoder (``end``, ``middle``, ``start``; empty without a block);
- ``epochs`` where the notes state them (Tables 6, A, C, D), ``variant`` (``reported``: a
  prior work's number printed beside the paper's baseline), ``metric``, ``value`` as printed
  (percent for accuracies, recall and MR; metres for minADE/minFDE), ``higher_is_better``
  and a free ``note``.

What is not in the file, and why: the point-cloud and SSv2 rows of Table B (garbled in the
text copies the notes come from; read them off the PDF before adding them); Figure 2 and the
ImageNet-S-50 mIoU (plots, no numbers in the text). The notes give Tables 6 and A as one line
(none / +LLaMA / ViT-S-MLP / LLaMA fine-tuned at 300 and 100 epochs), so both ids carry those
eight numbers. Inferred, not stated: Table B's ImageNet row is ViT-S (its 80.1 baseline is
Table 1's ViT-S), Table D is ViT-S on ImageNet (as Table C), and Table 3 uses the last layer
(the paper's default; the released video code loads layer 15).

``beside(summary)`` sets them next to a report's per-cell summary: a cell *matches* a paper
row when its task is of the row's kind and dataset (and the row's model, where the task
builds one of the paper's models), with the same control, the same LM family and size where
the row names one, and the same layer (``last`` = that size's last layer) at the end of the
encoder. A cell with no match gets the paper's rows for its control on the same kind of task
as a *reference* ("paper, ImageNet ViT-S"): never comparable numbers (other data, models,
scales and schedules; the paper's values are percent, a sweep's metric may be a fraction).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from results.runs import last_layer
from results.stats import with_positions

PAPER_CSV = Path(__file__).with_name("paper_numbers.csv")
SOURCE = "Pang et al., ICLR 2024, arXiv 2310.12973"
TABLE_IDS = ("1", "2", "3", "4", "5a", "5b", "6", "A", "B", "C", "D")
IMAGE, POINTS, VIDEO, MOTION = ("image-classification", "point-cloud-classification",
                                "action-recognition", "motion-forecasting")
VQA, RETRIEVAL, VQA3D = "vqa", "retrieval", "3d-vqa"
TASK_KINDS = (IMAGE, POINTS, VIDEO, MOTION, VQA, RETRIEVAL, VQA3D)
CONTROLS = ("none", "pretrained", "mlp", "random-trained", "finetuned")
LM_CONTROLS = ("pretrained", "finetuned")  # an LM layer: family, size and layers given
LAYERS = ("", "last", "last2")
POSITIONS = ("", "end", "middle", "start")
TEXT = ("table", "task", "dataset", "model", "family", "size", "control", "layers", "position",
        "variant", "metric", "note")
COLUMNS = ("table", "task", "dataset", "model", "family", "size", "control", "layers",
           "position", "epochs", "variant", "metric", "value", "higher_is_better", "note")
KEY = [c for c in COLUMNS if c not in ("value", "higher_is_better", "note")]
LOWER_IS_BETTER = ("minADE", "minFDE", "MR")


class PaperDataError(ValueError):
    """The paper file is malformed; the message names the rows (file lines) at fault."""


@dataclass(frozen=True)
class TaskIdentity:
    """What an lmblocks task is in the paper's terms: its kind, the dataset(s) it reads, and
    the paper's visual model it builds (by architecture; empty: a model of lmblocks' own)."""

    kind: str
    datasets: tuple[str, ...]
    model: str = ""


TASKS = {
    "digits": TaskIdentity(IMAGE, ("digits",)),
    "digits-convstem": TaskIdentity(IMAGE, ("digits",)),
    "cifar10": TaskIdentity(IMAGE, ("CIFAR-10",)),
    "cifar100": TaskIdentity(IMAGE, ("CIFAR-100",)),
    "imagenet-vit-tiny": TaskIdentity(IMAGE, ("ImageNet",), "ViT-T"),
    "imagenet-vit-small": TaskIdentity(IMAGE, ("ImageNet",), "ViT-S"),
    "shapes3d": TaskIdentity(POINTS, ("shapes3d",)),
    "modelnet40": TaskIdentity(POINTS, ("ModelNet40-1k",), "Point-BERT"),  # 1024 points
    # the h5 variant found in --data-dir decides which: the task names the dataset only
    "scanobjectnn": TaskIdentity(POINTS, ("ScanObjectNN-BG", "ScanObjectNN-OBJ",
                                          "ScanObjectNN-T50"), "Point-BERT"),
    "moving-digits": TaskIdentity(VIDEO, ("moving-digits",)),
    "ssv2": TaskIdentity(VIDEO, ("SSv2",), "ViT-S"),
    "kinetics400": TaskIdentity(VIDEO, ("Kinetics-400",)),
    "road-graphs": TaskIdentity(MOTION, ("road-graphs",)),
    "argoverse": TaskIdentity(MOTION, ("Argoverse",), "VectorNet"),
    "shape-vqa": TaskIdentity(VQA, ("shape-vqa",)),
    "vqav2": TaskIdentity(VQA, ("VQAv2",)),  # a ViT-S/16 joint encoder, not METER
    "shape-retrieval": TaskIdentity(RETRIEVAL, ("shape-retrieval",)),
    "flickr30k": TaskIdentity(RETRIEVAL, ("Flickr30k",)),  # a dual encoder, not METER
    "coco-retrieval": TaskIdentity(RETRIEVAL, ("COCO",)),
    "shape-scenes-3d": TaskIdentity(VQA3D, ("shape-scenes-3d",)),
    "scanqa": TaskIdentity(VQA3D, ("SQA3D",)),  # SQA3D questions in ScanQA's layout
    # your own images and timm model (--encoder): no dataset or model of the paper's
    "images": TaskIdentity(IMAGE, ()),
}
# A sweep's metric -> the paper's metric of the same definition, per kind of task.
SAME_METRIC = {
    **{("val_acc", k): "top1" for k in (IMAGE, POINTS, VIDEO)},
    **{("val_top5_acc", k): "top5" for k in (IMAGE, POINTS, VIDEO)},
    ("val_acc", VQA): "acc", ("val_acc", VQA3D): "EM@1",
    ("val_minADE", MOTION): "minADE", ("val_minFDE", MOTION): "minFDE",
    ("val_miss_rate", MOTION): "MR",
    **{(f"val_r{k}_t2i", RETRIEVAL): f"IR@{k}" for k in (1, 5, 10)},
}
CELL = ["task", "family", "size", "layers", "position", "control"]
BESIDE = ["relation", *CELL, "sweep_metric", "mean", "n", "label", "paper_table",
          "paper_dataset", "paper_model", "paper_family", "paper_size", "paper_layers",
          "paper_position", "paper_epochs", "paper_variant", "paper_metric", "paper_value",
          "paper_higher_is_better", "same_model", "same_metric"]


def _lines(mask: pd.Series) -> str:
    """The file lines (header = line 1) of the rows where ``mask`` holds."""
    return ", ".join(str(i + 2) for i in mask[mask].index[:10])


def typed(raw: pd.DataFrame) -> pd.DataFrame:
    """The file's text columns -> typed columns: text (str, empty for none), ``epochs``
    (nullable Int64), ``value`` (float), ``higher_is_better`` (bool)."""
    if missing := [c for c in COLUMNS if c not in raw]:
        raise PaperDataError(f"paper file: missing columns {missing}; expected {list(COLUMNS)}")
    raw = raw.reset_index(drop=True)
    df = pd.DataFrame({c: raw[c].fillna("").astype(str).str.strip() for c in TEXT})
    value = pd.to_numeric(raw["value"], errors="coerce")
    if (bad := value.isna()).any():
        raise PaperDataError(f"paper file: non-numeric value on line(s) {_lines(bad)}: "
                             f"{list(raw['value'][bad][:5])}")
    epochs_text = raw["epochs"].fillna("").astype(str).str.strip()
    epochs = pd.to_numeric(epochs_text.replace("", None), errors="coerce")
    if (bad := (epochs.isna() & epochs_text.ne("")) | (epochs.fillna(0) % 1 != 0)).any():
        raise PaperDataError(f"paper file: epochs not a whole number on line(s) {_lines(bad)}")
    flag = raw["higher_is_better"].astype(str).str.strip().str.lower()
    if (bad := ~flag.isin(["true", "false"])).any():
        raise PaperDataError(f"paper file: higher_is_better not true/false on line(s) "
                             f"{_lines(bad)}")
    df["epochs"] = epochs.astype("Int64")
    df["value"] = value.astype(float)
    df["higher_is_better"] = flag.eq("true")
    return df[list(COLUMNS)]


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Known tables, kinds, controls, layers and positions; a dataset, model and metric on
    every row; the LM named exactly where the control has one; the metric's direction; no
    two rows with the same key. Returns ``df``; raises PaperDataError naming the lines."""
    checks = {
        f"unknown table (valid: {', '.join(TABLE_IDS)})": ~df["table"].isin(TABLE_IDS),
        f"unknown task kind (valid: {', '.join(TASK_KINDS)})": ~df["task"].isin(TASK_KINDS),
        f"unknown control (valid: {', '.join(CONTROLS)})": ~df["control"].isin(CONTROLS),
        f"unknown layers (valid: {LAYERS})": ~df["layers"].isin(LAYERS),
        f"unknown position (valid: {POSITIONS})": ~df["position"].isin(POSITIONS),
        "empty dataset, model or metric": (df[["dataset", "model", "metric"]] == "").any(axis=1),
        "no family, size and layers for an LM control": df["control"].isin(LM_CONTROLS) & (
            df[["family", "size", "layers"]] == "").any(axis=1),
        "an LM, layers or position for 'none'": df["control"].eq("none") & (
            df[["family", "size", "layers", "position"]] != "").any(axis=1),
        "higher_is_better disagrees with the metric": df["higher_is_better"]
        == df["metric"].isin(LOWER_IS_BETTER),
        "duplicated key": df.duplicated(KEY, keep=False),
        "non-numeric value": pd.to_numeric(df["value"], errors="coerce").isna(),
    }
    wrong = [f"{what} on line(s) {_lines(mask)}" for what, mask in checks.items() if mask.any()]
    if wrong:
        raise PaperDataError("paper file: " + "; ".join(wrong))
    return df


def read_paper(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    """The paper's numbers, typed and validated."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    return validate(typed(raw))


def write_paper(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write the file ``read_paper`` reads back equal."""
    validate(df)
    out = df[list(COLUMNS)].copy()
    out["higher_is_better"] = out["higher_is_better"].map({True: "true", False: "false"})
    out.to_csv(path, index=False, lineterminator="\n")
    return Path(path)


@functools.lru_cache(maxsize=4096)  # a report asks it once a cell: thousands, few distinct
def layer_matches(paper_layers: str, family: str, size: str, layers: str) -> bool:
    """A cell's layer label (``'31'``, ``'30:32'``) is the paper row's ``last``/``last2``
    of that family and size; an empty paper ``layers`` matches any."""
    if not paper_layers:
        return True
    last = last_layer(family, size) if family and size else None
    if last is None:
        return False
    want = {"last": str(last), "last2": f"{last - 1}:{last + 1}"}.get(paper_layers)
    return str(layers) == want


def _paper_positions(position: str) -> list[str]:
    """The paper rows' positions a cell's matches: a row without one is of the method (the
    block at the end), so it matches cells at the end (and those without a block)."""
    return ["", "end"] if position in ("", "end") else [position]


def matches(cell: pd.Series | dict, paper: pd.DataFrame,
            test_layers: bool = True) -> pd.DataFrame:
    """The paper rows one summary cell matches (see the module docstring); without
    ``test_layers``, those it matches on everything but the layer."""
    ident = TASKS.get(cell["task"])
    if ident is None:
        return paper.iloc[:0]
    p = paper[(paper["task"] == ident.kind) & paper["dataset"].isin(ident.datasets)
              & (paper["control"] == cell["control"])
              & paper["position"].isin(_paper_positions(cell.get("position", "")))
              & paper["family"].isin(["", cell["family"]])
              & paper["size"].isin(["", cell["size"]])]
    if ident.model:
        p = p[p["model"] == ident.model]
    if not test_layers:
        return p
    keep = [layer_matches(pl, cell["family"], cell["size"], cell["layers"]) for pl in p["layers"]]
    return p[keep]


def references(task: str, control: str, family: str, size: str,
               paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows for ``control`` on the same kind of task: those of the cell's LM
    (family and size, else family) when the paper has any, else all of them."""
    ident = TASKS.get(task)
    if ident is None:
        return paper.iloc[:0]
    p = paper[(paper["task"] == ident.kind) & (paper["control"] == control)]
    if family:
        for narrower in (p[(p["family"] == family) & (p["size"] == size)],
                         p[p["family"] == family]):
            if not narrower.empty:
                return narrower
    return p


def label(row: pd.Series) -> str:
    """``paper, ImageNet ViT-S, opt 125m last layer, 100 epochs (Table C)``."""
    text = f"paper, {row['dataset']} {row['model']}"
    if row["family"]:
        text += f", {row['family']} {row['size']}"
    if row["layers"]:
        text += {"last": " last layer", "last2": " last two layers"}[row["layers"]]
    if row["position"] not in ("", "end"):
        text += f" at the {row['position']}"
    if pd.notna(row["epochs"]):
        text += f", {row['epochs']} epochs"
    if row["variant"]:
        text += f", {row['variant']}"
    return text + f" (Table {row['table']})"


def _row(relation: str, cell: dict, p: pd.Series, metric: str) -> dict:
    ident = TASKS[cell["task"]]
    return {
        "relation": relation, **{c: cell.get(c, "") for c in CELL}, "sweep_metric": metric,
        "mean": cell.get("mean", float("nan")), "n": cell.get("n", pd.NA), "label": label(p),
        **{f"paper_{c}": p[c] for c in ("table", "dataset", "model", "family", "size",
                                        "layers", "position", "epochs", "variant", "metric",
                                        "value", "higher_is_better")},
        "same_model": bool(ident.model) and ident.model == p["model"],
        "same_metric": SAME_METRIC.get((metric, ident.kind)) == p["metric"],
    }


def beside(summary: pd.DataFrame, metric: str | None = None,
           paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper rows beside a report's per-cell summary: every cell's matches
    (``relation`` = match, with the cell's mean and n), then, per (task, control, family,
    size) of the cells that match nothing, the paper's rows for that control on the same
    kind of task (``relation`` = reference: not comparable, context only)."""
    paper = read_paper() if paper is None else paper
    metric = metric or summary.attrs.get("metric", "")
    rows, unmatched = [], []
    if summary.empty or "task" not in summary:
        return pd.DataFrame(columns=BESIDE)
    # ``matches`` a cell at a time, with the paper filtered once per (task, control, family,
    # size) and each layer test cached (``layer_matches``): a study's cells
    # share a few of those and differ in the layer (thousands of cells, a few paper rows).
    candidates: dict[tuple, list[dict]] = {}
    summary = with_positions(summary)
    for cell in summary[[*CELL, "mean", "n"]].to_dict("records"):
        group = tuple(cell[c] for c in ("task", "control", "family", "size", "position"))
        if group not in candidates:
            p = matches({**cell, "layers": None}, paper, test_layers=False)
            candidates[group] = p.to_dict("records")
        hits = [r for r in candidates[group]
                if layer_matches(r["layers"], cell["family"], cell["size"], str(cell["layers"]))]
        rows += [_row("match", cell, p, metric) for p in hits]
        if not hits:
            unmatched.append(group)
    for task, control, family, size, position in dict.fromkeys(unmatched):
        group = {"task": task, "control": control, "family": family, "size": size,
                 "layers": "", "position": position, "mean": float("nan"), "n": pd.NA}
        rows += [_row("reference", group, p, metric) for _, p in
                 references(task, control, family, size, paper).iterrows()]
    return pd.DataFrame(rows, columns=BESIDE)


def markdown_section(rows: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The report's section: what matched, what is only a reference, which of the sweep's
    controls the paper never ran."""
    md = [f"## The paper's numbers ({SOURCE}) beside the sweep's cells\n",
          ("match: same kind of task, dataset, control, LM and layer (and the paper's model "
           "where the task builds it; see same_model, same_metric). reference: the paper's "
           "rows for a control on the same kind of task, shown for context only: NOT "
           "comparable (other data, model, scale and schedule). Paper values as printed "
           "(percent for accuracies and recalls).\n")]
    if not summary.empty and "control" in summary:
        absent = [c for c in dict.fromkeys(summary["control"]) if c not in CONTROLS]
        if absent:
            md.append(f"Controls the paper did not run: {', '.join(absent)} (its random "
                      "block is trained, random-trained; it has no adapters-only arm).\n")
    if rows.empty:
        return [*md, "No paper row relates to this sweep's tasks and controls.", ""]
    cols = ["relation", "task", "control", "family", "size", "layers", "mean", "label",
            "paper_metric", "paper_value", "same_metric"]
    shown = rows[cols].assign(mean=rows["mean"].round(4))
    return [*md, shown.to_markdown(index=False), ""]
