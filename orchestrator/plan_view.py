"""How the dry run shows a plan: the hyperparameters once, a row per trial with its status,
the weights it reads, per size a layer against its checkpoint, the cost estimate, and the
prescreen's ranking where ``--prescreen`` ran."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.estimate import Assumptions


def hparams_line(plan) -> str:
    """What a dry run's cost and results hang on, once: the plan's rows share all but the
    per-size lr scale and a preset's per-task recipes (``task_hparams``), so the lr is each
    trial's peak lr (``lr x size_lr_scale``, as ``experiments.recipe.effective_lr``, which
    imports torch), and a task with a recipe of its own is named with it."""
    hp = plan[0].hparams
    per_task = {t.task: t.hparams for t in plan}
    own = {task: h for task, h in per_task.items()
           if (h.lr, h.warmup_epochs, h.epochs, h.auto_epochs)
           != (hp.lr, hp.warmup_epochs, hp.epochs, hp.auto_epochs)}
    lrs: dict[float, list[str]] = {}
    for t in plan:
        if t.task in own:
            continue
        names = lrs.setdefault(t.hparams.lr * t.hparams.size_lr_scale, [])
        if t.family and f"{t.family}/{t.size}" not in names:
            names.append(f"{t.family}/{t.size}")
    lr = f"lr {next(iter(lrs)):g}" if len(lrs) == 1 else "lr " + ", ".join(
        f"{v:g} ({', '.join(names) or 'no LM'})" for v, names in lrs.items())
    recipes = "".join(f"; {task}: epochs {'auto:' * h.auto_epochs}{h.epochs}, lr {h.lr:g}, "
                      f"warm-up {h.warmup_epochs:g}" for task, h in own.items())
    return (f"epochs {'auto:' * hp.auto_epochs}{hp.epochs}, {lr}, batch size {hp.batch_size}, "
            f"schedule {hp.schedule}, warm-up {hp.warmup_epochs:g} epochs{recipes}")


def print_plan(plan, status: dict[str, str] | None = None, skips: str = "",
               assumptions: Assumptions | None = None) -> None:
    """The plan, one row per trial; with ``status`` (cell key -> finished/failed, as
    ``orchestrator.store.cell_status``) a status column and a count of each, ``skips``
    saying what a real run does with the finished ones; with ``assumptions``
    (``orchestrator.estimate.Assumptions``) the study's cost estimate after it."""
    from orchestrator.plan import human_bytes, plan_table, size_table

    table = plan_table(plan)
    shown = table.assign(
        block_params=table["block_params"].map(lambda n: f"{n:,}"),
        read_bytes=table["read_bytes"].map(human_bytes),
    )
    if status is not None:
        shown["status"] = [status.get(t.key, "new") for t in plan]
    print(hparams_line(plan))
    print(shown.to_string(index=False))
    print(
        f"\n{len(table)} trials; LM-layer-sized block parameters "
        f"{table['block_params'].sum():,}; "
        f"weights to read {human_bytes(table['read_bytes'].sum())} "
        f"({human_bytes(table.drop_duplicates(['family', 'size', 'layers'])['read_bytes'].sum())}"
        " distinct)"
    )
    if status is not None:
        n = shown["status"].value_counts()
        print(f"{n.get('new', 0)} new, {n.get('finished', 0)} finished ({skips}), "
              f"{n.get('failed', 0)} failed")
    sizes = size_table(plan)
    if not sizes.empty:
        print("\nper size: one layer read vs the whole checkpoint")
        print(sizes.assign(
            layer_bytes=sizes["layer_bytes"].map(human_bytes),
            checkpoint_bytes=sizes["checkpoint_bytes"].map(human_bytes),
            layer_share=sizes["layer_share"].map(lambda r: f"{r:.2%}"),
        ).to_string(index=False))
    if assumptions is not None:
        from orchestrator.estimate import estimate_lines

        unfinished = (None if status is None else
                      [s != "finished" for s in shown["status"]])
        print(*estimate_lines(plan, assumptions, unfinished), sep="\n")
