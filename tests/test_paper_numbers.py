"""The paper's numbers as data (``results/paper_numbers.csv``): typed, validated, written and
read back equal; one number of every table checked against the paper's text; its rows set
beside a sweep's cells (matches, else references) and written by the report."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import experiments.tasks  # noqa: F401  (registers the tasks)
from experiments.tasks.registry import list_tasks
from results.build import build_report
from results.paper import (
    PAPER_CSV,
    TABLE_IDS,
    TASKS,
    PaperDataError,
    beside,
    read_paper,
    write_paper,
)
from tests.test_report import log_sweep

ROOT = Path(__file__).resolve().parents[1]
NOTES = [ROOT / "shared" / "PAPER.md", ROOT.parent / "shared" / "PAPER.md"]

# (table, the paper's words as the project's notes quote them, the row, the number in them)
QUOTES = [
    ("1", "ViT-S 80.1 -> 80.7 (ImageNet-C 57.2 -> 58.7",
     {"dataset": "ImageNet", "model": "ViT-S", "control": "pretrained"}, "80.7"),
    ("2", "ScanObjectNN BG/OBJ/T50 87.4/88.1/83.1 -> 88.0/88.5/83.8",
     {"dataset": "ScanObjectNN-T50", "control": "pretrained"}, "83.8"),
    ("3", "ViT-B 64.97/89.50 -> 66.03/90.25",
     {"model": "ViT-B", "control": "pretrained", "metric": "top5"}, "90.25"),
    ("4", "VectorNet 0.77/1.23/13.2 -> 0.76/1.20/12.7",
     {"model": "VectorNet", "control": "none", "metric": "minFDE"}, "1.23"),
    ("5a", "VQAv2 test-dev 69.60 -> 70.23", {"dataset": "VQAv2", "control": "pretrained"},
     "70.23"),
    ("5b", "SQA3D EM@1/EM@10 47.20/86.82 -> 48.09/89.03 (ScanQA 46.58/85.97)",
     {"control": "none", "metric": "EM@10", "variant": ""}, "86.82"),
    ("6", "300 epochs 80.1 / 80.7 / 80.4 / 78.9", {"control": "finetuned", "epochs": 300}, "78.9"),
    ("A", "100 epochs 75.3 / 75.8 / 75.5 / 76.8", {"control": "mlp", "epochs": 100}, "75.5"),
    ("B", "ImageNet 80.1 / 80.7 / 80.4 / 76.9",
     {"dataset": "ImageNet", "control": "random-trained"}, "76.9"),
    ("C", "1.3B 75.62", {"family": "opt", "size": "1.3b"}, "75.62"),
    ("D", "start 72.66", {"position": "start"}, "72.66"),
]


def one_row(df: pd.DataFrame, table: str, **where) -> pd.Series:
    rows = df[df["table"] == table]
    for column, value in where.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, f"table {table} {where}: {len(rows)} rows"
    return rows.iloc[0]


def test_the_file_loads_typed_and_round_trips(tmp_path):
    df = read_paper()
    assert list(df.groupby("table", sort=False).size().index) == list(TABLE_IDS)
    assert len(df) == 123
    assert df["value"].dtype == float and str(df["epochs"].dtype) == "Int64"
    assert df["higher_is_better"].dtype == bool
    assert not df.loc[df["metric"] == "minADE", "higher_is_better"].any()
    back = read_paper(write_paper(df, tmp_path / "paper.csv"))
    pd.testing.assert_frame_equal(back, df)
    again = write_paper(back, tmp_path / "again.csv")  # writing is stable: same bytes
    assert again.read_bytes() == (tmp_path / "paper.csv").read_bytes()
    assert again.read_text().splitlines()[0] == PAPER_CSV.read_text().splitlines()[0]


@pytest.mark.parametrize("table,quote,where,number", QUOTES, ids=[q[0] for q in QUOTES])
def test_one_number_of_each_table_against_the_paper_text(table, quote, where, number):
    assert number in re.findall(r"\d+\.\d+", quote)
    assert one_row(read_paper(), table, **where)["value"] == float(number)
    for notes in NOTES:  # where the project's notes are checked out: the quote is theirs
        if notes.is_file():
            assert quote in " ".join(notes.read_text().split())


def test_garbled_table_b_rows_are_left_out():
    b = read_paper().query("table == 'B'")
    assert set(b["task"]) == {"image-classification", "retrieval", "3d-vqa",
                              "motion-forecasting"}
    assert len(b) == 36  # 4 arms x (1 ImageNet + 3 Flickr30k + 2 SQA3D + 3 Argoverse)


def test_validation_names_a_duplicated_row_and_a_non_numeric_value(tmp_path):
    text = PAPER_CSV.read_text().splitlines()
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join([*text, text[1]]) + "\n")
    with pytest.raises(PaperDataError, match=rf"duplicated key on line\(s\) 2, {len(text) + 1}"):
        read_paper(dup)
    df = read_paper()
    with pytest.raises(PaperDataError, match="duplicated key"):
        write_paper(pd.concat([df, df.iloc[:1]], ignore_index=True), tmp_path / "x.csv")
    bad = tmp_path / "bad.csv"
    fields = text[2].split(",")
    fields[12] = "80.x"
    bad.write_text("\n".join([text[0], text[1], ",".join(fields), *text[3:]]) + "\n")
    with pytest.raises(PaperDataError, match=r"non-numeric value on line\(s\) 3: \['80.x'\]"):
        read_paper(bad)
    wrong = df.copy()
    wrong.loc[0, "table"] = "7"
    with pytest.raises(PaperDataError, match=r"unknown table .* on line\(s\) 2"):
        write_paper(wrong, tmp_path / "y.csv")


def cell(task, control, family="", size="", layers="", mean=0.5):
    return {"task": task, "family": family, "size": size, "layers": layers,
            "control": control, "mean": mean, "n": 3}


def test_a_matching_cell_gets_its_paper_rows_and_others_get_references():
    summary = pd.DataFrame([
        cell("imagenet-vit-small", "pretrained", "llama", "1-7b", "31", 0.81),
        cell("imagenet-vit-small", "pretrained", "llama", "1-7b", "30:32"),
        cell("imagenet-vit-small", "pretrained", "opt", "125m", "11", 0.7),
        cell("imagenet-vit-small", "none", mean=0.8),
        cell("imagenet-vit-small", "pretrained", "llama", "1-7b", "15"),
        cell("digits", "pretrained", "opt", "125m", "11"),
        cell("digits", "random", "opt", "125m", "11"),
    ])
    rows = beside(summary, "val_acc")
    match = rows[rows["relation"] == "match"]
    last = match[match["layers"] == "31"]
    assert sorted(zip(last["paper_table"], last["paper_value"], strict=True)) == [
        ("1", 80.7), ("6", 75.8), ("6", 80.7), ("A", 75.8), ("A", 80.7), ("B", 80.7),
        ("D", 75.84)]  # not ViT-T/B, ImageNet-C, nor Table D's middle/start positions
    assert last["mean"].eq(0.81).all() and last["same_model"].all() and last["same_metric"].all()
    two = match[match["layers"] == "30:32"]
    assert list(zip(two["paper_table"], two["paper_value"], strict=True)) == [("D", 77.10)]
    opt = match[match["family"] == "opt"]
    assert list(zip(opt["paper_table"], opt["paper_value"], strict=True)) == [("C", 71.63)]
    assert "paper, ImageNet ViT-S, opt 125m last layer, 100 epochs (Table C)" in set(
        opt["label"])
    none = match[match["control"] == "none"]
    assert sorted(none["paper_table"]) == ["1", "6", "6", "A", "A", "B", "C", "D"]
    assert not (match["layers"] == "15").any()  # layer 15 of 32 is not the last

    ref = rows[rows["relation"] == "reference"]
    assert ref["mean"].isna().all()
    digits = ref[ref["task"] == "digits"]
    assert list(zip(digits["control"], digits["paper_value"], strict=True)) == [
        ("pretrained", 71.63)]  # the paper's row of the same LM; none for a frozen random
    llama15 = ref[(ref["task"] == "imagenet-vit-small") & (ref["family"] == "llama")]
    assert set(llama15["paper_table"]) == {"1", "6", "A", "B", "D"}  # the LM's rows as context


def test_unknown_tasks_and_empty_summaries_get_no_rows():
    assert beside(pd.DataFrame([cell("nope", "none")]), "val_acc").empty
    assert list(beside(pd.DataFrame(), "val_acc").columns)[:2] == ["relation", "task"]


def test_every_registered_task_has_a_paper_identity():
    assert set(list_tasks()) <= set(TASKS), "add the new task to results.paper.TASKS"


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_report_writes_the_paper_rows_beside_the_cells(uri, tmp_path):
    for task in ("digits", "imagenet-vit-small"):  # one experiment each (trial keys repeat)
        rows = [{"control": "none", "task": task, "seed": s, "val_acc": 0.5 + s / 10}
                for s in (0, 1)]
        rows += [{"family": "opt", "size": "125m", "layers": "11", "task": task,
                  "control": "pretrained", "seed": s, "val_acc": 0.7} for s in (0, 1)]
        log_sweep(uri, task, rows)
    report = build_report(uri, ["digits", "imagenet-vit-small"], tmp_path / "r")
    path = tmp_path / "r" / "paper.csv"
    assert path in report.files
    written = pd.read_csv(path, keep_default_na=False)
    got = written.set_index(["relation", "task", "control", "paper_table"])["paper_value"]
    assert got[("match", "imagenet-vit-small", "pretrained", "C")] == 71.63
    assert got[("match", "imagenet-vit-small", "none", "1")] == 80.1
    assert got[("reference", "digits", "pretrained", "C")] == 71.63
    assert not ((written["relation"] == "match") & (written["task"] == "digits")).any()
    md = (tmp_path / "r" / "ablation.md").read_text()
    assert "## The paper's numbers" in md and "NOT comparable" in md
    assert "paper, ImageNet ViT-S (Table 1)" in md
    for name in ("summary.csv", "runs.csv", "by_control.csv", "report.html"):
        assert (tmp_path / "r" / name).stat().st_size > 0  # the other outputs as before
