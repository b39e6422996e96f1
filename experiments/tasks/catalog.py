"""Every shipped task as plain data: its name, the module that registers it and what the plan
reads before anything is built (the metric a sweep optimises, classification or not, whether
its data ships with lmblocks).

This table is the registration: ``get_task(name)`` imports the task's module on first use, so
planning a sweep (and answering a bad flag) imports neither torch nor timm, and a trial
imports only its own task's model code. ``register_task`` checks that the module's ``Task``
agrees with its row here, so the two cannot drift apart. A new task: one module that calls
``register_task``, plus one row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskEntry:
    name: str
    module: str  # the module whose import registers the task
    metric: str = "val_acc"
    mode: str = "max"
    classification: bool = True  # the classification objective (label smoothing, Mixup apply)
    embedded: bool = True  # its data ships with lmblocks (no --data-dir)


_T = "experiments.tasks."
CATALOG: dict[str, TaskEntry] = {e.name: e for e in (
    TaskEntry("digits", _T + "digits"),
    TaskEntry("digits-convstem", _T + "digits"),
    TaskEntry("shapes3d", _T + "pointcloud"),
    TaskEntry("modelnet40", _T + "pointcloud", embedded=False),
    TaskEntry("scanobjectnn", _T + "pointcloud", embedded=False),
    TaskEntry("moving-digits", _T + "video"),
    TaskEntry("ssv2", _T + "video", embedded=False),
    TaskEntry("kinetics400", _T + "video", embedded=False),
    TaskEntry("road-graphs", _T + "forecasting", "val_minADE", "min", classification=False),
    TaskEntry("argoverse", _T + "forecasting", "val_minADE", "min", classification=False,
              embedded=False),
    TaskEntry("shape-vqa", _T + "vqa", classification=False),
    TaskEntry("vqav2", _T + "vqa", classification=False, embedded=False),
    TaskEntry("shape-retrieval", _T + "retrieval", "val_rmean", classification=False),
    TaskEntry("flickr30k", _T + "retrieval", "val_rmean", classification=False, embedded=False),
    TaskEntry("coco-retrieval", _T + "retrieval", "val_rmean", classification=False,
              embedded=False),
    TaskEntry("shape-scenes-3d", _T + "vqa3d", classification=False),
    TaskEntry("scanqa", _T + "vqa3d", classification=False, embedded=False),
    TaskEntry("cifar10", _T + "images", embedded=False),
    TaskEntry("cifar100", _T + "images", embedded=False),
    TaskEntry("imagenet-vit-tiny", _T + "images", embedded=False),
    TaskEntry("imagenet-vit-small", _T + "images", embedded=False),
)}
