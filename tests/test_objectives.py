"""The generic pieces of the non-classification tasks: objectives, multi-part inputs through
the training loop, padded sequences through the blocks, the word vocabulary, per-task
metrics reaching MLflow, sweeps whose tasks disagree on the metric, and the objectives'
own validation loaders scoring what a plain loader does."""

from __future__ import annotations

import types

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.data import DataLoader

import experiments.tasks  # noqa: F401  (registers the tasks)
from encoders.lm.controls import build_block
from encoders.visual.masked_blocks import run_blocks
from encoders.visual.text import PAD, UNK, TextEmbedding, WordVocab
from experiments.objectives.answer_scores import ANSWER_SCORES
from experiments.objectives.classification import CLASSIFICATION
from experiments.tasks import registry
from experiments.tasks.registry import Task
from experiments.training import run_trial
from orchestrator.plan import TrialSpec, build_plan
from orchestrator.spec import Hyperparameters, SpecError, SweepSpec

# Embedded tasks whose objective reads validation its own way (``Objective.val_loader``).
STREAMED = [name for name in registry.list_tasks()
            if registry.get_task(name).embedded
            and hasattr(registry.get_task(name).objective, "val_loader")]


def test_the_retrieval_objective_reads_validation_its_own_way():
    assert "shape-retrieval" in STREAMED


@pytest.mark.parametrize("task_name", STREAMED)
def test_an_objectives_val_loader_changes_how_data_is_read_not_the_numbers(task_name):
    """What the training loop relies on: ``evaluate`` on ``val_loader(val_ds, **kw)`` gives
    the task's metric and ``val_loss``, the numbers of a plain ``DataLoader(val_ds, **kw)``,
    and the same again on the next epoch's pass."""
    task = registry.get_task(task_name)
    torch.manual_seed(0)
    model = task.build_model(None)
    _, val = task.build_data()
    kw = {"batch_size": 64, "num_workers": 0}
    loader = task.objective.val_loader(val, **kw)
    got = task.objective.evaluate(model, loader, "cpu")
    assert {"val_loss", task.metric} <= set(got)
    plain = task.objective.evaluate(model, DataLoader(val, **kw), "cpu")
    assert got == pytest.approx(plain, rel=1e-5, abs=1e-6)
    assert task.objective.evaluate(model, loader, "cpu") == pytest.approx(got)


def test_padded_tokens_change_nothing_in_timm_and_frozen_blocks():
    torch.manual_seed(0)
    frozen, _ = build_block(family="minilm", size="l6", layers=(2,), control="pretrained",
                            seed=0, visual_dim=32)
    blocks = nn.ModuleList([Block(32, 4, 2.0), frozen]).eval()
    x = torch.randn(2, 7, 32)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    out = run_blocks(blocks, x, mask)
    alone = run_blocks(blocks, x[1:, :4])  # the second sequence without its padding
    torch.testing.assert_close(out[1, :4], alone[0], atol=1e-5, rtol=1e-5)
    garbage = x.clone()
    garbage[1, 4:] = 100.0  # whatever sits in the padded slots
    torch.testing.assert_close(run_blocks(blocks, garbage, mask)[:, :4], out[:, :4],
                               atol=1e-5, rtol=1e-5)
    # without the mask the padded keys do change the real tokens: the mask is what works
    assert not torch.allclose(run_blocks(blocks, garbage)[1, :4], out[1, :4], atol=1e-3)


def test_classification_evaluate_reports_top1_mean_class_and_top5():
    logits = torch.tensor([[5.0, 0, 0, 0, 0, 0],  # class 0: right
                           [4.0, 5, 0, 0, 0, 0],  # class 0: wrong, 2nd best (in the top 5)
                           [-1.0, 5, 0, 1, 2, 3],  # class 0: wrong, last (not in the top 5)
                           [0.0, 5, 0, 0, 0, 0]])  # class 1: right
    y = torch.tensor([0, 0, 0, 1])
    model = nn.Identity()
    m = CLASSIFICATION.evaluate(model, [(logits, y)], "cpu")
    assert m["val_acc"] == 0.5
    assert m["val_mean_class_acc"] == pytest.approx((1 / 3 + 1) / 2)  # the rare class counts
    assert m["val_top5_acc"] == 0.75
    assert m["val_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item())


def test_answer_scores_give_vqa_accuracy_of_the_predicted_answer():
    scores = torch.tensor([[1.0, 0, 0], [0, 2 / 3, 1.0], [0, 0, 1.0]])
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0]])  # 1, 2/3, 0
    m = ANSWER_SCORES.evaluate(nn.Identity(), [(logits, scores)], "cpu")
    assert m["val_acc"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["val_top5_acc"] == pytest.approx(1.0)  # 3 answers: all in the top 5
    assert m["val_loss"] > 0
    perfect = ANSWER_SCORES.loss(torch.tensor([[20.0, -20, -20]]), torch.tensor([[1.0, 0, 0]]))
    assert perfect < 1e-6 < ANSWER_SCORES.loss(logits, scores)


def test_word_vocab_encodes_with_padding_unknowns_and_truncation():
    vocab = WordVocab.build(["What color is the cube?", "what SHAPE is the red one", "the"])
    assert vocab.itos[:4] == ["<pad>", "<unk>", "the", "what"]  # most frequent first
    ids, mask = vocab.encode("What is the purple cube?", max_len=7)
    assert ids.tolist()[:5] == [vocab.stoi["what"], vocab.stoi["is"], vocab.stoi["the"], UNK,
                                vocab.stoi["cube"]]
    assert ids.tolist()[5:] == [PAD, PAD] and mask.tolist() == [True] * 5 + [False] * 2
    assert vocab.encode("the the the the", max_len=2)[0].tolist() == [vocab.stoi["the"]] * 2
    emb = TextEmbedding(len(vocab), 8, max_len=7)
    assert emb(ids[None]).shape == (1, 7, 8)


class PairModel(nn.Module):
    """(a, b) -> a scalar per sample from a token sequence of a's and b's features; a blocks
    list so the frozen block and the probe work as in the real tasks."""

    def __init__(self, block: nn.Module | None) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 16)
        self.blocks = nn.ModuleList([Block(16, 2, 2.0)])
        if block is not None:
            self.blocks.append(block)
        self.head = nn.Linear(16, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(torch.cat([a, b], dim=1)[..., None])  # (B, 8, 16)
        return self.head(run_blocks(self.blocks, tokens).mean(1)).squeeze(-1)


class SquaredError:
    def loss(self, out, y):
        return ((out - y) ** 2).mean()

    @torch.no_grad()
    def evaluate(self, model, loader, device):
        errs = [((model(*x) - y) ** 2) for x, y in loader]
        mse = torch.cat(errs).mean().item()
        return {"val_loss": mse, "val_mse": mse}


class PairData(torch.utils.data.Dataset):
    """Inputs are a tuple (a, b); the target is sum(a) - sum(b)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.a, self.b = torch.rand(n, 4, generator=g), torch.rand(n, 4, generator=g)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i):
        return (self.a[i], self.b[i]), self.a[i].sum() - self.b[i].sum()


@pytest.fixture
def pair_task():
    task = Task(name="test-pairs", description="test", visual_dim=16,
                build_data=lambda data_dir=None: (PairData(256, 0), PairData(64, 1)),
                build_model=PairModel, metric="val_mse", mode="min", objective=SquaredError(),
                informative_tokens=lambda x: torch.cat([x[0] > 0.5, x[1] > 2], dim=1),
                valid_tokens=lambda x: torch.ones(len(x[0]), 8, dtype=torch.bool),
                prefix_tokens=0)
    registry.register_task(task)
    yield task
    del registry._TASKS[task.name]


def test_training_loop_runs_a_tuple_input_task_with_its_own_objective(pair_task):
    hp = Hyperparameters(epochs=3, lr=3e-3, batch_size=32)
    out = []
    run_trial(TrialSpec("minilm", "l6", (5,), "test-pairs", "pretrained", 0, hp),
              lambda m, s: out.append((m, s)))
    metrics = [m for m, _ in out]
    assert "val_acc" not in metrics[-1] and "best_val_acc" not in metrics[-1]
    mse = [m["val_mse"] for m in metrics]
    assert mse[-1] < mse[0]  # it learns
    assert metrics[-1]["best_val_mse"] == min(mse)  # the best of a lower-is-better metric
    assert out[-1][1].best == min(mse)
    # the probe ran on the tuple inputs: only a's tokens can be informative
    assert 0 < metrics[-1]["conc_act_after"] < 1
    assert '"inputs":null' in metrics[-1]["probe_maps"]


def test_a_sweep_mixing_metrics_or_using_the_classification_recipe_is_refused(pair_task):
    with pytest.raises(SpecError, match="different metrics.*test-pairs: val_mse \\(min\\)"):
        build_plan(SweepSpec(tasks=("digits", "test-pairs"), controls=("none",)))
    with pytest.raises(SpecError, match="mixup apply to classification tasks only.*test-pairs"):
        build_plan(SweepSpec(tasks=("test-pairs",), controls=("none",),
                             hparams=Hyperparameters(mixup=0.8)))
    assert len(build_plan(SweepSpec(tasks=("test-pairs",), controls=("none",)))) == 1


def test_mlflow_logs_whatever_validation_metrics_a_task_reports(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import MlflowTrialLogger, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    spec = SweepSpec(tasks=("digits",), controls=("none",))
    parent = start_parent_run(client, "objectives", spec, 1)
    logger = MlflowTrialLogger(uri, "objectives", parent)
    trial_spec = build_plan(spec)[0]
    trial = types.SimpleNamespace(trial_id="t0", config=trial_spec.to_config())
    logger.log_trial_start(trial)
    logger.log_trial_result(1, trial, {"epoch": 1, "train_loss": 2.0, "val_minADE": 1.25,
                                       "val_r5_t2i": 0.5, "best_val_minADE": 1.25,
                                       "conc_act_after": 0.4, "done": False, "node_id": "x"})
    run = client.get_run(logger.runs["t0"])
    assert run.data.metrics == {"train_loss": 2.0, "val_minADE": 1.25, "val_r5_t2i": 0.5,
                                "best_val_minADE": 1.25, "conc_act_after": 0.4}
