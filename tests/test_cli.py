"""CLI: plans, presets, and every bad input exiting 2 with one line before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from encoders.lm.block_options import ADAPTER_INITS
from encoders.lm.controls import list_controls
from encoders.lm.registry import get_family, list_families
from experiments.tasks.registry import list_tasks
from orchestrator import cli, tuner
from orchestrator.plan import build_plan
from orchestrator.search import HPARAM_SEARCHES
from orchestrator.spec import SpecError, list_presets, load_spec
from tests.conftest import save_tiny_opt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_sweep_may_start(monkeypatch, tmp_path):
    """Fail loudly if a bad input reaches Ray; run in a scratch dir."""

    def forbidden(*a, **k):
        raise AssertionError("run_sweep reached")

    monkeypatch.setattr(tuner, "run_sweep", forbidden)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_bad(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lmblocks-sweep: error: ")
    assert not ray.is_initialized()
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--family", "gpt9"], f"unknown family 'gpt9'; valid: {', '.join(list_families())}"),
        (["--family", "opt", "--sizes", "7b"],
         f"unknown size '7b' for family 'opt'; valid: {', '.join([*get_family('opt').sizes])}"),
        (["--family", "opt", "--layers", "12"], "layer '12' out of range for opt/125m (12 layers"),
        (["--layers", "-7"], "layer '-7' out of range for minilm/l6 (6 layers: valid -6..5)"),
        (["--layers", "5:3"], "empty layer span '5:3'"),
        (["--layers", "x"], "bad layer 'x'; valid: last, all"),
        (["--tasks", "imagenet"], f"unknown task 'imagenet'; valid: {', '.join(list_tasks())}"),
        (["--controls", "frozen"],
         f"unknown control 'frozen'; valid: {', '.join(list_controls())}"),
        (["--seeds", "a"], "bad seeds ['a']"),
        (["--preset", "nope"], f"unknown preset 'nope'; valid: {', '.join(list_presets())}"),
        (["--compute-dtype", "int3"], "unknown compute dtype 'int3'"),
        (["--epochs", "0"], "bad epochs 0; valid: an integer >= 1"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--micro-batch", "7", "--batch-size", "32"],
         "bad micro_batch '7' for batch_size 32; valid: auto or a divisor of 32"),
        (["--gpus-per-trial", "1.5"], ("bad --gpus-per-trial 1.5; valid: a share of one GPU in "
         "(0, 1], or a whole number N >= 2 (N data-parallel workers)")),
        (["--gpus-per-trial", "3", "--batch-size", "32"],
         ("bad batch_size 32 for --gpus-per-trial 3 (task digits-convstem); valid: a multiple "
         "of 3")),
        (["--gpus-per-trial", "2", "--batch-size", "32", "--micro-batch", "32"],
         "bad micro_batch '32' for batch_size 16; valid: auto or a divisor of 16"),
        (["--family", "llama", "--sizes", "2-70b", "--layers", "0:60"],
         ("needs 104.96 GB at a micro-batch of 1 (experiments/memory_model.py), more than "
          "90% of a 80 GB GPU (--gpu-memory-gb); valid: fewer layers per trial")),
        (["--search-hparams", "both"],
         f"unknown --search-hparams 'both'; valid: {', '.join(HPARAM_SEARCHES)}"),
        (["--search-hparams"], "--search-hparams joint needs --search optuna (got --search grid)"),
        (["--search", "optuna", "--search-hparams", "per-cell"],
         "--search-hparams per-cell needs --search grid"),
        (["--search-hparams", "per-cell", "--samples-per-cell", "0"],
         "--samples-per-cell must be positive (got 0)"),
        (["--num-workers", "many"], "bad num_workers 'many'; valid: auto or an integer >= 0"),
        (["--lr", "nan"], "bad lr nan; valid: a finite number > 0"),
        (["--lr", "inf"], "bad lr inf; valid: a finite number > 0"),
        (["--weight-decay", "-1"], "bad weight_decay -1.0; valid: a finite number >= 0"),
        (["--warmup-epochs", "nan"], "bad warmup_epochs nan; valid: a finite number >= 0"),
        (["--label-smoothing", "nan"], "bad label_smoothing nan; valid: a number in [0, 1)"),
        (["--seeds", "-1"], "bad seed -1; valid: 0..2147483647"),
        (["--seeds", "2147483648"], "bad seed 2147483648; valid: 0..2147483647"),
        (["--sizes", ""], "empty --sizes; valid: one or more values"),
        (["--seeds", ","], "empty --seeds; valid: one or more integers"),
        (["--tracking-uri", "bogus://x"], "unknown --tracking-uri scheme 'bogus' in 'bogus://x'"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be positive (got 0)"),
        (["--peak-tflops", "-5"], "--peak-tflops must be positive (got -5.0)"),
        (["--preset", str(ROOT / "tests" / "data" / "bad_init.yaml")],
         f"unknown adapter init 'he'; valid: {', '.join(ADAPTER_INITS)}"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, expected):
    assert expected in run_bad(capsys, *argv)


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_unopenable_sqlite_store_is_one_line_before_mlflow_retries(capsys, tmp_path, dry_run):
    """MLflow retries such a store for minutes, then prints a traceback; checked first."""
    extra = ["--dry-run"] if dry_run else []
    (tmp_path / "notes.db").write_text("my notes\n")
    err = run_bad(capsys, "--tracking-uri", f"sqlite:///{tmp_path}/notes.db", *extra)
    assert "notes.db is not a SQLite database" in err and "valid:" in err
    assert (tmp_path / "notes.db").read_text() == "my notes\n"  # untouched
    (tmp_path / "folder.db").mkdir()
    err = run_bad(capsys, "--tracking-uri", f"sqlite:///{tmp_path}/folder.db", *extra)
    assert "folder.db is not a file" in err
    (tmp_path / "mlflow.db").write_text("not sqlite")  # the default store, in the working dir
    assert "mlflow.db is not a SQLite database" in run_bad(capsys, *extra)
    (tmp_path / "blocker").write_text("")
    err = run_bad(capsys, "--tracking-uri", f"sqlite:///{tmp_path}/blocker/x/m.db", *extra)
    assert "cannot be created" in err


def test_empty_sweep(capsys, tmp_path):
    preset = tmp_path / "empty.yaml"
    preset.write_text("controls: []\n")
    assert "empty sweep" in run_bad(capsys, "--preset", str(preset))
    preset.write_text("families: [minilm]\nbogus: 1\n")
    assert "unknown field(s) ['bogus']" in run_bad(capsys, "--preset", str(preset))


def test_missing_weights_offline_names_the_repo_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"SQLite format 3\x00existing results")
    err = run_bad(capsys, "--family", "opt", "--sizes", "125m", "1.3b")
    assert "facebook/opt-125m" in err and "--weights-dir" in err
    assert db.read_bytes() == b"SQLite format 3\x00existing results"
    assert not (tmp_path / "lmblocks-runs").exists()


def test_checkpoint_not_matching_the_registry(capsys, tmp_path):
    save_tiny_opt(tmp_path / "w" / "facebook" / "opt-125m", shard=None)
    capsys.readouterr()  # drop transformers' progress bar
    err = run_bad(capsys, "--family", "opt", "--weights-dir", str(tmp_path / "w"))
    assert "config.json: not the registry's opt/125m: hidden size 32 (registry: 768), " \
           "layers 4 (registry: 12), attention heads 4 (registry: 12)" in err


def test_weights_dir_must_exist(capsys, tmp_path):
    err = run_bad(capsys, "--weights-dir", str(tmp_path / "nowhere"))
    assert "nowhere" in err and "does not exist" in err and "GGUF file" in err


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_dry_runs_without_weights(capsys, preset):
    assert cli.main(["--preset", preset, "--dry-run"]) == 0
    out = capsys.readouterr().out
    n = len(build_plan(load_spec(preset)))
    assert f"{n} trials" in out
    assert not ray.is_initialized()


def test_dry_run_opt_all_sizes_plans_offline(capsys):
    assert cli.main(["--family", "opt", "--sizes", "all", "--layers", "last", "--controls", "pretrained",
                     "--seeds", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 trials" in out
    assert "66b" in out and "1,019,335,680" in out  # OPT-66B, one layer: params
    assert "2.04 GB" in out  # ... and its fp16 bytes


def test_default_preset_plan():
    plan = build_plan(load_spec("default"))
    controls = [t.control for t in plan]
    # issue 15: a control set that can answer a question, 3 seeds, 2+ pretrained layers
    assert {"pretrained", "random-trained", "mlp", "none"} == set(controls)
    pre = sorted({t.layers for t in plan if t.control == "pretrained"})
    assert pre == [(0,), (5,)]
    assert {t.seed for t in plan} == {0, 1, 2}
    assert len(plan) == 15
    assert len({t.key for t in plan}) == len(plan)


def test_layer_syntax_ranges_spans_negative():
    from orchestrator.layers import resolve_layers

    assert resolve_layers(["2..4"], 12, "x") == [(2,), (3,), (4,)]
    assert resolve_layers(["-2..-1", "last"], 12, "x") == [(10,), (11,)]
    assert resolve_layers(["10:12"], 12, "x") == [(10, 11)]
    assert resolve_layers(["all"], 3, "x") == [(0,), (1,), (2,)]
    with pytest.raises(SpecError.__mro__[1]):
        resolve_layers(["3..1"], 12, "x")


def test_sweep_script_subprocess_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "--family", "nope"],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"lmblocks-sweep: error: unknown family 'nope'; "
                                   f"valid: {', '.join(list_families())}")


def test_final_norm_is_validated_and_recorded(capsys):
    err = run_bad(capsys, "--family", "opt", "--sizes", "350m", "--final-norm", "--dry-run")
    assert "350m" in err and "no final norm" in err
    err = run_bad(capsys, "--final-norm", "--dry-run")  # minilm is post-LN BERT
    assert "minilm" in err
    spec = cli.spec_from_args(cli.build_parser().parse_args(
        ["--family", "opt", "--final-norm"]))  # bare: the LM's own norm, as the flag was
    plan = build_plan(spec)
    assert plan[0].to_config()["final_norm"] == "lm"
    from experiments.trial import TrialSpec

    # an older run's recorded "True" reads as lm
    assert TrialSpec.from_config({**plan[0].to_config(), "final_norm": "True"}) == plan[0]
    for choice in ("none", "unit-rms", "lm"):
        spec = cli.spec_from_args(cli.build_parser().parse_args(
            ["--family", "opt", "--final-norm", choice]))
        assert {t.to_config()["final_norm"] for t in build_plan(spec)} == {choice}
    assert cli.main(["--final-norm", "unit-rms", "--dry-run"]) == 0  # any family: no weights
    capsys.readouterr()
    err = run_bad(capsys, "--family", "opt", "--final-norm", "rms", "--dry-run")
    assert err == "lmblocks-sweep: error: unknown final norm 'rms'; valid: none, unit-rms, lm"


def test_runtime_settings_reach_the_trial_but_not_its_identity():
    """--num-workers and --compile travel in the trial's config (the worker reads them, the
    run records them) but leave its key alone: a cell finished with 0 workers, eager, is not
    run again with 8 workers, compiled."""
    from experiments.trial import TrialSpec

    plain = build_plan(cli.spec_from_args(cli.build_parser().parse_args([])))
    fast = build_plan(cli.spec_from_args(cli.build_parser().parse_args(
        ["--num-workers", "8", "--compile"])))
    cfg = fast[0].to_config()
    assert (cfg["num_workers"], cfg["compile"]) == ("8", True)
    assert plain[0].to_config()["num_workers"] == "auto"
    assert [t.key for t in fast] == [t.key for t in plain]
    assert TrialSpec.from_config({**cfg, "compile": "True", "num_workers": 8}) == fast[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--search", "bogus"], "unknown --search 'bogus'; valid: grid, optuna"),
        (["--scheduler", "x"], "unknown --scheduler 'x'; valid: fifo, asha"),
        (["--sampler", "y"], "unknown --sampler 'y'; valid: tpe"),
        (["--num-samples", "0"], "--num-samples must be positive (got 0)"),
        (["--tasks", "cifar10", "--data-dir", "/nonexistent"], "/nonexistent"),
        (["--lr", "nan"], "bad lr nan"),
        (["--storage", "/etc/hostname"], "--storage '/etc/hostname' is not a directory"),
    ],
)
def test_dry_run_rejects_what_a_real_run_rejects(capsys, argv, expected):
    """One validation path: the same line, exit 2, with and without --dry-run."""
    real = run_bad(capsys, *argv)
    dry = run_bad(capsys, *argv, "--dry-run")
    assert expected in dry and dry == real


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs: [1\n", "not valid YAML at line 2"),
        ("epochs: ten\n", "bad epochs 'ten'; valid: an integer"),
        ("seeds: [a]\n", "bad seeds 'a'; valid: an integer"),
        ("lr: fast\n", "bad lr 'fast'; valid: a number"),
        ("compile: maybe\n", "bad compile 'maybe'; valid: true or false"),
        ("epochs: 2.5\n", "bad epochs 2.5; valid: an integer"),
        ("[1, 2]\n", "expected a mapping of sweep fields"),
    ],
)
def test_bad_presets_exit_2_naming_file_key_and_value(capsys, tmp_path, text, expected):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    err = run_bad(capsys, "--preset", str(preset), "--dry-run")
    assert expected in err and str(preset) in err


def test_preset_numbers_written_as_yaml_strings_are_read_as_numbers(tmp_path):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1): it is still the number it means."""
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 1e-3\nepochs: 2\nseeds: [0, 1]\n")
    spec = cli.spec_from_args(cli.build_parser().parse_args(["--preset", str(preset)]))
    assert (spec.hparams.lr, spec.hparams.epochs, spec.seeds) == (0.001, 2, (0, 1))


def test_storage_that_cannot_be_created_is_refused(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = run_bad(capsys, "--storage", str(blocker / "runs"))
    assert "cannot be created" in err
    cli.check_storage(str(tmp_path / "new" / "runs"))  # a creatable folder passes
    assert not (tmp_path / "new").exists()  # and checking it created nothing


# --- conventions: the tracking store, the experiment's name, --version, --help -------------


@pytest.fixture
def reached_run(monkeypatch):
    """Stop a valid sweep where it first opens MLflow: what store and experiment it uses."""
    from orchestrator import store

    seen = {}

    class Reached(Exception):
        pass

    def finished_cells(uri, experiment):
        seen.update(uri=uri, experiment=experiment)
        raise Reached

    monkeypatch.setattr(store, "finished_cells", finished_cells)

    def run(*argv: str) -> dict:
        seen.clear()
        with pytest.raises(Reached):
            cli.main(["--preset", "smoke", *argv])
        return dict(seen)

    return run


def test_tracking_uri_flag_then_environment_then_local_sqlite(monkeypatch, tmp_path, reached_run):
    flag, env = f"sqlite:///{tmp_path}/flag.db", f"sqlite:///{tmp_path}/env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert reached_run()["uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    assert reached_run()["uri"] == env
    assert reached_run("--tracking-uri", flag)["uri"] == flag
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # set but empty: unset
    assert reached_run()["uri"].endswith("/mlflow.db")


def test_the_environments_uri_is_checked_and_named_like_the_flag(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    err = run_bad(capsys, "--dry-run")
    assert "unknown MLFLOW_TRACKING_URI scheme 'bogus' in 'bogus://x'" in err
    assert cli.main(["--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0  # flag wins
    assert not (tmp_path / "m.db").exists()  # a dry run creates no store


def test_default_experiment_is_prefixed_never_mlflows_default(reached_run):
    assert reached_run()["experiment"] == "lmblocks-smoke"
    assert reached_run("--name", "mine")["experiment"] == "lmblocks-mine"
    assert reached_run("--experiment", "Exact")["experiment"] == "Exact"  # as given
    assert cli.default_experiment("default") == "lmblocks-default"


def test_version_prints_the_installed_distributions_and_exits_0(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"lmblocks-sweep {version('lmblocks')}"


def test_help_names_every_valid_value_the_defaults_and_the_exit_codes(monkeypatch):
    from experiments.trial import DTYPES
    from orchestrator import options
    from orchestrator.search import SAMPLERS, SEARCHES
    from orchestrator.tuner import SCHEDULERS

    # the parser is built without Ray and Optuna (fast answers); its lists must be theirs
    for written, registry in ((options.SEARCHES, SEARCHES), (options.SAMPLERS, tuple(SAMPLERS)),
                              (options.HPARAM_SEARCHES, HPARAM_SEARCHES),
                              (options.SCHEDULERS, SCHEDULERS)):
        assert sorted(written) == sorted(registry), "update orchestrator/options.py"
    monkeypatch.setenv("COLUMNS", "100000")  # no wrapping (argparse breaks at hyphens)
    parser = cli.build_parser()
    text = " ".join(parser.format_help().split())
    assert text.startswith("usage: lmblocks-sweep ")
    for name in (*list_families(), *list_tasks(), *list_controls(), *list_presets(), *DTYPES):
        assert name in text, name
    for code in ("0 every trial finished", "1 some trials failed", "2 bad input"):
        assert code in text
    helps = {a.option_strings[0]: " ".join(a.help.split()) for a in parser._actions
             if a.option_strings}
    assert all(helps.values()), [f for f, h in helps.items() if not h]
    for flag in ("--epochs", "--lr", "--weight-decay", "--batch-size", "--compute-dtype",
                 "--schedule", "--warmup-epochs", "--mixup", "--num-workers", "--final-norm"):
        assert "default: the preset's" in helps[flag], flag
    assert "an integer >= 1" in helps["--epochs"] and "> 0" in helps["--lr"]
    assert "MLFLOW_TRACKING_URI" in helps["--tracking-uri"]
    assert "lmblocks-NAME" in helps["--experiment"]


def test_sweep_script_and_console_script_are_one_program(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "--help"],
                          capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: lmblocks-sweep ")
    assert "exit status: 0" in proc.stdout
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"lmblocks-sweep": "orchestrator.cli:main",
                       "lmblocks-report": "results.report:main"}


@pytest.mark.parametrize(("flag", "env", "expected"), [
    (None, None, "local"),  # a Ray of the sweep's own, never the last `ray start` cluster
    (None, "10.0.0.5:6379", "10.0.0.5:6379"),  # Ray's job submission names it so
    ("auto", "10.0.0.5:6379", "auto"),
    ("10.0.0.7:6379", None, "10.0.0.7:6379"),
])
def test_without_an_address_a_sweep_starts_its_own_ray(monkeypatch, flag, env, expected):
    """Ray's own default joins the cluster last started on the machine (read from
    /tmp/ray/ray_current_cluster): a sweep that meant to run alone died with another test's
    cluster when that was stopped, printing nothing. It asks for ``local`` instead."""
    seen = {}
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what _start_ray sets stays here
    monkeypatch.setattr(tuner.ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(tuner.ray, "cluster_resources", lambda: {"CPU": 2})
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    tuner._start_ray(flag, quiet=True, verbose=False)
    assert seen["address"] == expected
