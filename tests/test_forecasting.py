"""Motion forecasting: the procedural road graphs (the map decides the future), the
VectorNet-style encoder with the block appended (polyline tokens, padding ignored, each
control), the winner-takes-all objective and its metrics, the preset trained end to end,
Argoverse-1 files on a fixture in the real layout."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

import experiments.datasets.argoverse as argo
import experiments.datasets.polylines as pl
import experiments.datasets.road_graphs as rg
import experiments.objectives.trajectories as trj
import experiments.tasks.forecasting as fc  # registers road-graphs and argoverse
from encoders.lm.controls import build_block
from encoders.visual.vectornet import (
    END,
    FEATURES,
    INFORMATIVE,
    INTERSECTION,
    START,
    STEP,
    TURN,
    TYPE_AGENT,
    TYPE_LANE,
    TYPE_OTHER,
    VALID,
    constant_velocity,
)
from experiments.datasets.base import DataError
from experiments.tasks.registry import get_task
from experiments.training import run_trial
from orchestrator.plan import build_plan
from orchestrator.spec import load_spec


@pytest.fixture(autouse=True)
def one_thread():
    """These models are small: on shared cores a second OpenMP thread mostly waits for the
    first (a loaded 2-core machine ran a training step 30x slower with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_road_graphs_shapes_frame_and_determinism():
    polylines, valid, future = rg.make_road_graphs(24, seed=3)
    assert polylines.shape == (24, rg.ROAD_POLYLINES, pl.MAX_VECTORS, FEATURES)
    assert valid.shape == (24, rg.ROAD_POLYLINES) and valid.dtype == torch.bool
    assert future.shape == (24, pl.FUTURE, 2)
    agent = polylines[:, 0]
    assert (agent[..., TYPE_AGENT] == agent[..., VALID]).all() and valid[:, 0].all()
    assert (agent[..., VALID].sum(-1) == pl.HISTORY - 1).all()
    # agent-centric: the last observed position is the origin, the heading is +x
    last = agent[:, pl.HISTORY - 2]
    assert torch.allclose(last[:, END], torch.zeros(24, 2), atol=1e-5)
    lag = last[:, END] - agent[:, pl.HISTORY - 1 - pl.HEADING_LAG, START]
    assert (lag[:, 0] > 1.0).all() and (lag[:, 1].abs() < 1e-4).all()
    assert (future[:, 0, 0] > 0).all() and (future[:, 0, 1].abs() < 0.5).all()
    # lanes in every scene; padding is all zeros
    lanes = (polylines[..., TYPE_LANE].amax(-1) > 0) & valid
    assert (lanes.sum(-1) >= 3).all()
    assert (polylines[~valid] == 0).all()
    again = rg.make_road_graphs(24, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (polylines, valid, future), strict=True))
    assert not torch.equal(rg.make_road_graphs(24, seed=4)[2], future)


def test_the_future_follows_the_flagged_lanes():
    polylines, valid, future = rg.make_road_graphs(64, seed=5)
    informative = fc.informative_polylines((polylines, valid))
    assert informative.shape == valid.shape and not (informative & ~valid).any()
    assert informative[:, 0].all() and (informative[:, 1:].sum(-1) >= 1).all()
    for p, flags, fut in zip(polylines.numpy(), informative.numpy(), future.numpy(),
                             strict=True):
        segs = p[1:][flags[1:]]
        segs = segs[segs[..., VALID] > 0]  # (S, FEATURES): the flagged lanes' vectors
        a, ab = segs[:, START], segs[:, END] - segs[:, START]
        t = np.clip(((fut[:, None] - a) * ab).sum(-1) / (ab**2).sum(-1), 0, 1)
        dist = np.linalg.norm(fut[:, None] - (a + t[..., None] * ab), axis=-1).min(-1)
        assert dist.max() < 0.8  # within the lateral drift of a flagged lane, all 3 s


def test_the_map_decides_the_future():
    """Constant velocity misses curves and turns by metres, following the lane does not; and
    one history goes on differently under different lane layouts."""
    rng = np.random.default_rng(7)
    cv_miss, lane_miss = [], []
    while len(cv_miss) < 40:
        p = rg.draw_params(rng)
        if p.kind == "straight" or (p.kind == "intersection" and p.choice == "straight"):
            continue
        scene = rg.render(p)
        cv = constant_velocity(torch.from_numpy(scene.polylines)[None], pl.FUTURE)[0, 0]
        cv_miss.append(np.linalg.norm(cv[-1].numpy() - scene.future[-1]))
        lane_miss.append(np.linalg.norm(scene.on_lane - scene.future, axis=-1).max())
    assert np.mean(cv_miss) > 6.0 and np.median(cv_miss) > 3.0
    assert max(lane_miss) < 0.7

    base = replace(rg.draw_params(np.random.default_rng(0)), kind="intersection",
                   exits=("left", "straight", "right"), ahead=5.0, speed=8.0, accel=0.0)
    curve = replace(base, kind="curve", curve=(1.2, 40.0))
    scenes = [rg.render(replace(base, choice=c)) for c in ("left", "straight", "right")]
    scenes += [rg.render(curve), rg.render(replace(curve, curve=(-1.2, 40.0)))]
    for s in scenes[1:]:
        np.testing.assert_allclose(s.history, scenes[0].history, atol=1e-6)
        np.testing.assert_allclose(s.polylines[0], scenes[0].polylines[0], atol=1e-6)
    ends = np.stack([s.future[-1] for s in scenes])  # (5, 2) final positions
    gaps = np.linalg.norm(ends[:, None] - ends[None], axis=-1)
    assert gaps[~np.eye(5, dtype=bool)].min() > 2 * trj.MISS_THRESHOLD  # each one a miss for the others
    assert ends[0, 1] > 5 and ends[2, 1] < -5 and abs(ends[1, 1]) < 1  # left, straight, right
    # and the exit taken is one that exists: no left turn where the map has none
    no_left = rg.render(replace(base, exits=("straight", "right"), choice="right"))
    turns = no_left.polylines[..., TURN][no_left.valid].max(-1)
    assert (turns <= 0).all() and no_left.future[-1, 1] < -5


def test_constant_velocity_baseline_and_the_recorded_chance():
    history = np.stack([np.arange(-19, 1) * 0.7, np.zeros(20)], 1)  # 7 m/s along +x
    line = pl.trajectory_polyline(history, np.ones(20, bool), agent=True)
    cv = constant_velocity(torch.from_numpy(line)[None, None], pl.FUTURE)
    expected = torch.stack([torch.arange(1, 31) * 0.7, torch.zeros(30)], 1)
    assert torch.allclose(cv[0, 0], expected, atol=1e-5)
    task = get_task("road-graphs")
    assert task.metric == "val_minADE" and task.mode == "min" and task.prefix_tokens == 0
    assert abs(trj.baseline_min_ade(task.build_data()[1]) - task.chance) < 0.01


class Fixed(torch.nn.Module):
    """A 'model' that returns the same predictions whatever it is given."""

    def __init__(self, traj: torch.Tensor, logits: torch.Tensor) -> None:
        super().__init__()
        self.traj, self.logits = torch.nn.Parameter(traj), torch.nn.Parameter(logits)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.traj, self.logits


def test_objective_metrics_on_known_predictions():
    """Two samples, two modes, three steps, truth at the origin. Sample 0: mode 0 is 5 m off
    throughout, mode 1 is 0, 0, 1 m off (ADE 1/3, FDE 1). Sample 1: mode 0 is 1, 2, 3 m off
    (ADE 2, FDE 3), mode 1 2, 2, 2.5 m off (ADE 13/6, FDE 2.5): minADE and minFDE come from
    different modes, and 2.5 m at the end is a miss."""
    traj = torch.zeros(2, 2, 3, 2)
    traj[0, 0] = torch.tensor([3.0, 4.0])
    traj[0, 1, 2] = torch.tensor([1.0, 0.0])
    traj[1, 0, :, 0] = torch.tensor([1.0, 2.0, 3.0])
    traj[1, 1, :, 1] = torch.tensor([2.0, 2.0, 2.5])
    future = torch.zeros(2, 3, 2)
    obj = trj.Trajectories()
    model = Fixed(traj, torch.zeros(2, 2))
    m = obj.evaluate(model, [(torch.zeros(2), future)], "cpu")
    assert m["val_minADE"] == pytest.approx((1 / 3 + 2) / 2)
    assert m["val_minFDE"] == pytest.approx((1 + 2.5) / 2)
    assert m["val_miss_rate"] == pytest.approx(0.5)
    # winner-takes-all: smooth-L1 on mode 1 of sample 0 and mode 0 of sample 1 (12 numbers:
    # 0.5 for the 1 m, 0.5 + 1.5 + 2.5 for 1, 2, 3 m), cross-entropy log 2 toward them
    expected = 5.0 / 12 + math.log(2)
    assert m["val_loss"] == pytest.approx(expected)
    loss = obj.loss(model(None), future)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert model.traj.grad[0, 0].abs().sum() == 0 and model.traj.grad[1, 1].abs().sum() == 0
    assert model.traj.grad[0, 1].abs().sum() > 0
    assert model.logits.grad[0, 1] < 0 < model.logits.grad[0, 0]  # toward the winner
    exactly = obj.scores(torch.tensor([[[[2.0, 0.0]]]]), torch.zeros(1, 1, 2))
    assert exactly["miss_rate"].item() == 0.0  # a miss is more than 2 m off


def test_block_sees_polyline_tokens_and_padding_is_ignored():
    """Padded polylines change nothing, in the timm blocks and the frozen block alike.
    (Every control training with the block on the path: tests/test_tasks.py.)"""
    task = get_task("road-graphs")
    block, _ = build_block(family="minilm", size="l6", layers=(5,), control="pretrained",
                           seed=0, visual_dim=task.visual_dim)
    torch.manual_seed(0)
    model = task.build_model(block)
    assert model.blocks[-1] is block
    seen = []
    block.register_forward_hook(lambda m, a, out: seen.append(a[0].shape))
    polylines, valid, _ = rg.make_road_graphs(8, seed=0)
    model.eval()
    with torch.no_grad():
        traj, logits = model(polylines, valid)
        padded = torch.cat([polylines, torch.randn(8, 5, pl.MAX_VECTORS, FEATURES)], 1)
        padded[:, -5:, :, VALID] = 0  # five more polylines, every vector of them padding
        more = torch.cat([valid, torch.zeros(8, 5, dtype=torch.bool)], 1)
        traj2, logits2 = model(padded, more)
        flipped = polylines.clone()
        flipped[..., INFORMATIVE] = 1 - flipped[..., INFORMATIVE]  # the probe's flag only
        traj3, _ = model(flipped, valid)
    assert traj.shape == (8, fc.MODES, pl.FUTURE, 2) and logits.shape == (8, fc.MODES)
    assert torch.allclose(traj, traj2, atol=1e-4) and torch.allclose(logits, logits2, atol=1e-5)
    assert torch.equal(traj, traj3)  # the encoder never reads it (it comes from the future)
    assert seen[0] == torch.Size([8, rg.ROAD_POLYLINES, task.visual_dim])
    assert seen[1] == torch.Size([8, rg.ROAD_POLYLINES + 5, task.visual_dim])


@pytest.mark.slow
def test_embedded_default_beats_constant_velocity():
    spec = load_spec("forecasting").replace(controls=("none",), seeds=(0,), epochs=3)
    (trial,) = build_plan(spec)
    out: list[dict] = []
    run_trial(trial, lambda metrics, state: out.append(metrics))
    last, chance = out[-1], get_task("road-graphs").chance
    assert last["val_minADE"] < 0.7 * chance, (last, chance)
    assert last["val_minFDE"] > last["val_minADE"] and 0 <= last["val_miss_rate"] < 1
    assert last["best_val_minADE"] == min(m["val_minADE"] for m in out)
    for name in ("act_before", "act_after", "freq_before", "freq_after", "cls_attn"):
        assert 0 < last[f"conc_{name}"] < 1, name


# --- Argoverse-1 on a fixture in the real layout -------------------------------------------

HEADING = math.radians(30)  # the agent drives along this direction in the map, 1 m a step
ORIGIN = np.array([2000.0, 1500.0])  # its position at the last observed step


def along(d: np.ndarray, side: float = 0.0) -> np.ndarray:
    """Map points ``d`` metres along the agent's road from ORIGIN and ``side`` to its left."""
    u = np.array([math.cos(HEADING), math.sin(HEADING)])
    return ORIGIN + np.asarray(d)[:, None] * u + side * np.array([-u[1], u[0]])


def write_scenario(path, city="PIT", steps=50):
    rows = []
    for t in range(steps):
        stamp = 315968386.5 + 0.1 * t
        x, y = along(np.array([t - 19.0]))[0]
        rows.append((stamp, "00000000-0000-0000-0000-000000000000", "AGENT", x, y, city))
        x, y = along(np.array([t - 30.0]), side=3.5)[0]  # the AV, one lane to the left
        rows.append((stamp, "00000000-0000-0000-0000-000000000001", "AV", x, y, city))
        if 5 <= t < 15:  # seen for 10 observed steps only
            x, y = along(np.array([20.0 - t]), side=-4.0)[0]
            rows.append((stamp, "00000000-0000-0000-0000-000000000002", "OTHERS", x, y, city))
        if t >= 25 or t == 3:  # seen after the history, or once: no vector
            x, y = along(np.array([5.0]), side=-8.0)[0]
            rows.append((stamp, "00000000-0000-0000-0000-000000000003", "OTHERS", x, y, city))
    lines = ["TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME"]
    lines += [f"{s},{tid},{kind},{x},{y},{c}" for s, tid, kind, x, y, c in rows]
    path.write_text("\n".join(lines) + "\n")


LANES = {  # lane_id: (points, turn_direction, is_intersection)
    9604854: (along(np.linspace(-10, 60, 10)), "NONE", "False"),  # the agent's lane
    9604855: (along(np.linspace(30, -28, 30), side=3.5), "NONE", "False"),  # oncoming, 29 vectors
    9604856: (along(np.full(6, 8.0), side=0) + np.linspace(-10, 10, 6)[:, None]
              * np.array([-math.sin(HEADING), math.cos(HEADING)]), "LEFT", "True"),  # crossing
    9604857: (along(np.linspace(0, 20, 5), side=150.0), "NONE", "False"),  # too far away
}


def write_map(path) -> None:
    nodes, ways, nid = [], [], 0
    for lane_id, (points, turn, inter) in LANES.items():
        refs = []
        for x, y in points:
            nodes.append(f'  <node id="{nid}" x="{x}" y="{y}" />')
            refs.append(f'    <nd ref="{nid}" />')
            nid += 1
        ways.append("\n".join([
            f'  <way lane_id="{lane_id}">',
            '    <tag k="has_traffic_control" v="False" />',
            f'    <tag k="turn_direction" v="{turn}" />',
            f'    <tag k="is_intersection" v="{inter}" />',
            '    <tag k="l_neighbor_id" v="None" />',
            '    <tag k="r_neighbor_id" v="None" />',
            *refs,
            '    <tag k="predecessor" v="9608794" />',
            '    <tag k="successor" v="9609147" />',
            "  </way>"]))
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<ArgoverseVectorMap>\n'
                    + "\n".join(nodes + ways) + "\n</ArgoverseVectorMap>\n")


def write_argoverse(root, n_train=2, n_val=1):
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "data").mkdir(parents=True)
        for i in range(n):
            write_scenario(root / split / "data" / f"{1000 + i}.csv")
    (root / "map_files").mkdir()
    write_map(root / "map_files" / "pruned_argoverse_PIT_10314_vector_map.xml")


def test_argoverse_scenarios_in_the_agent_frame(tmp_path):
    write_argoverse(tmp_path)
    task = get_task("argoverse")
    task.check_data(str(tmp_path))
    train, val = task.build_data(str(tmp_path))
    assert len(train) == 2 and len(val) == 1
    (polylines, valid), future = val[0]
    assert polylines.shape == (argo.ARGO_POLYLINES, pl.MAX_VECTORS, FEATURES)
    assert valid.shape == (argo.ARGO_POLYLINES,) and future.shape == (pl.FUTURE, 2)
    # agent first: 19 vectors ending at the origin, heading along +x; its future straight on
    agent = polylines[0]
    assert agent[:, VALID].sum() == 19 and agent[:, TYPE_AGENT].sum() == 19
    assert torch.allclose(agent[18, END], torch.zeros(2), atol=1e-4)
    assert torch.allclose(agent[18, END] - agent[18, START], torch.tensor([1.0, 0.0]), atol=1e-4)
    expected = torch.stack([torch.arange(1.0, 31.0), torch.zeros(30)], 1)
    assert torch.allclose(future, expected, atol=1e-4)
    real = polylines[valid]
    lanes, others = real[real[:, 0, TYPE_LANE] > 0], real[real[:, 0, TYPE_OTHER] > 0]
    # four lane chunks (the oncoming lane's 29 vectors make two); the far lane is left out
    assert len(lanes) == 4 and sorted(lanes[..., VALID].sum(-1).tolist()) == [5, 9, 9, 20]
    own = lanes[lanes[:, :, END][..., 1].abs().amax(-1) < 1e-3]  # on the agent's line y = 0
    assert len(own) == 1 and own[0, :, INFORMATIVE].sum() == 9
    crossing = lanes[lanes[:, 0, INTERSECTION] > 0]
    assert len(crossing) == 1 and crossing[0, 0, TURN] == 1.0
    assert torch.allclose(crossing[0, 0, START], torch.tensor([8.0, -10.0]), atol=1e-3)
    flagged = fc.informative_polylines((polylines[None], valid[None]))[0]
    assert flagged.sum() == 2 and flagged[0]  # the agent and its own lane, nothing else
    # the AV (20 observed steps) and the partly seen track (steps 5..14); the others have no
    # observed vector
    assert sorted(others[..., VALID].sum(-1).tolist()) == [9, 19]
    partial = others[others[..., VALID].sum(-1) == 9][0]
    assert torch.allclose(partial[:9, STEP], torch.arange(6, 15) / 20)


def test_bad_argoverse_data_dir(tmp_path):
    task = get_task("argoverse")
    for data_dir, msg in ((None, "needs --data-dir"), (tmp_path / "nowhere", "not a directory"),
                          (tmp_path, "no train/data/*.csv")):
        with pytest.raises(DataError, match=re.escape(msg)) as err:
            task.check_data(None if data_dir is None else str(data_dir))
        assert "map_files/pruned_argoverse_<CITY>_<ID>_vector_map.xml" in str(err.value)
        assert "\n" not in str(err.value)
    write_argoverse(tmp_path)
    (tmp_path / "map_files" / "pruned_argoverse_PIT_10314_vector_map.xml").rename(
        tmp_path / "map_files" / "PIT.xml")
    with pytest.raises(DataError, match="no map_files/pruned_argoverse_[*]_vector_map.xml"):
        task.check_data(str(tmp_path))
    write_map(tmp_path / "map_files" / "pruned_argoverse_PIT_10314_vector_map.xml")
    write_scenario(tmp_path / "val" / "data" / "1000.csv", city="MIA")
    with pytest.raises(DataError, match="no map for city 'MIA'.*found: PIT"):
        task.build_data(str(tmp_path))[1][0]
    write_scenario(tmp_path / "val" / "data" / "1000.csv", steps=20)
    with pytest.raises(DataError, match="20 timestamps; a train/val file has 50"):
        task.build_data(str(tmp_path))[1][0]
