"""The registries the plan reads are plain data, and the data are right: every size's parameter
counts equal what transformers' own classes hold, and every task's catalog row equals the
task its module registers."""

from __future__ import annotations

import dataclasses

import pytest

import encoders.lm.families  # noqa: F401  (registers the families)
from encoders.lm.registry import (
    count_layer_params,
    count_model_params,
    get_family,
    list_families,
    with_counts,
)
from experiments.tasks import registry as tasks
from experiments.tasks.catalog import CATALOG

SIZES = [(f, s) for f in list_families() for s in get_family(f).sizes]


@pytest.mark.parametrize(("family", "size"), SIZES, ids=[f"{f}/{s}" for f, s in SIZES])
def test_every_size_counts_as_transformers_builds_it(family, size):
    fam = get_family(family)
    entry = fam.size(size)
    assert entry.layer_params == count_layer_params(family, size), (
        f"{family}/{size}: PARAMS should hold {count_layer_params(family, size):_}")
    assert entry.model_params == count_model_params(family, size), (
        f"{family}/{size}: PARAMS should hold {count_model_params(family, size):_}")
    assert fam.layer_params(size) == entry.layer_params
    assert entry.torch_dtype.itemsize == entry.itemsize  # the string names a real dtype


def test_a_size_without_counts_is_counted_and_a_wrong_dtype_refused():
    opt = get_family("opt")
    bare = dataclasses.replace(opt.size("125m"), layer_params=None, model_params=None)
    counted = dataclasses.replace(opt, sizes={"125m": bare})
    assert counted.layer_params("125m") == opt.layer_params("125m")
    with pytest.raises(KeyError):
        with_counts({"125m": bare}, {})
    with pytest.raises(ValueError, match="dtype 'fp16'; valid: float32, float16, bfloat16"):
        dataclasses.replace(bare, dtype="fp16")


def test_every_catalog_row_is_the_task_its_module_registers():
    for name, row in CATALOG.items():
        task = tasks.get_task(name)  # imports row.module, whose Task must match the row
        assert task.name == name
        assert (task.metric, task.mode, task.objective is None, task.embedded) == (
            row.metric, row.mode, row.classification, row.embedded), name
    assert set(tasks.list_tasks()) >= set(CATALOG)


def test_a_task_that_disagrees_with_its_row_is_refused(monkeypatch):
    task = tasks.get_task("digits")
    monkeypatch.setattr(tasks, "_TASKS", {})
    with pytest.raises(ValueError, match="disagrees with its catalog row"):
        tasks.register_task(dataclasses.replace(task, metric="val_loss", mode="min"))
    tasks.register_task(task)  # as catalogued: accepted
    assert tasks.get_task("digits") is task
