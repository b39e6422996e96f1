"""The deployment recipes in deploy/, tested as far as a machine without SLURM or Kubernetes
allows: each parses, has the fields its system requires, fills its placeholders, and its entry
command is the real CLI with flags the real parser accepts. The SLURM script is run for real
with stand-ins for srun, scontrol, ray and lmblocks-sweep that record what they are asked."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from string import Template

import yaml

from orchestrator.options import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def fill(path: Path, **values: str) -> str:
    """The file with its ``${NAME}`` placeholders filled (as envsubst does)."""
    return Template(path.read_text()).safe_substitute(values)


def parses_as_the_cli(command: str) -> object:
    argv = shlex.split(command)
    assert argv[0] == "lmblocks-sweep"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lmblocks-sweep"] == "orchestrator.cli:main"  # the installed command
    return build_parser().parse_args(argv[1:])


def test_the_kuberay_rayjob_is_a_complete_rayjob_running_the_cli():
    text = fill(DEPLOY / "kuberay-rayjob.yaml", LMBLOCKS_IMAGE="registry.lab/lmblocks:0.1.0",
                LMBLOCKS_STORAGE="s3://bucket/runs", MLFLOW_TRACKING_URI="http://mlflow:5000",
                WORKERS="4")
    body = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("${" in line for line in body)  # every placeholder the header documents
    job = yaml.safe_load(text)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    args = parses_as_the_cli(spec["entrypoint"])
    assert args.address == "auto" and args.storage == "s3://bucket/runs"
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"] == (
        "http://mlflow:5000")
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry.lab/lmblocks:0.1.0"
    [workers] = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["maxReplicas"] == 4
    container = workers["template"]["spec"]["containers"][0]
    assert container["image"] == head["image"] and container["resources"]["limits"][
        "nvidia.com/gpu"] == "1"


def test_the_cluster_launcher_yaml_starts_head_and_workers_and_keeps_ray_s_own_variable():
    text = fill(DEPLOY / "ray-cluster.yaml", HEAD_IP="10.0.0.1",
                WORKER_IPS="[10.0.0.2, 10.0.0.3]", SSH_USER="lab", LMBLOCKS_VENV="/shared/venv")
    config = yaml.safe_load(text)
    for key in ("cluster_name", "provider", "auth", "max_workers", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert key in config, key
    assert config["provider"] == {"type": "local", "head_ip": "10.0.0.1",
                                  "worker_ips": ["10.0.0.2", "10.0.0.3"]}
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    # the launcher fills $RAY_HEAD_IP itself: the documented envsubst leaves it alone
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    sweep = next(line for line in (DEPLOY / "ray-cluster.yaml").read_text().splitlines()
                 if "lmblocks-sweep" in line and "ray exec" in line)
    command = sweep.split('"', 1)[1] + " --family opt --sizes all"
    args = parses_as_the_cli(command.replace("\\", ""))
    assert args.address == "auto"


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_slurm_script_starts_a_head_then_workers_then_the_cli_on_the_cluster(tmp_path):
    shims, log = tmp_path / "bin", tmp_path / "calls.log"
    shims.mkdir()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{shims}:$PATH"\n')
    _shim(shims, "scontrol", 'printf "node1\\nnode2\\nnode3\\n"')
    # srun: drop its own options, run the command (as one task on the named node)
    _shim(shims, "srun", f'echo "srun $*" >> {log}\n'
          'while [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done\n"$@"')
    _shim(shims, "hostname", 'echo 10.1.2.3')
    _shim(shims, "ray", f'echo "ray $*" >> {log}')
    _shim(shims, "lmblocks-sweep", f'echo "lmblocks-sweep $*" >> {log}\n'
          f'exec {sys.executable} -c "import sys; from orchestrator.options import '
          f'build_parser; build_parser().parse_args(sys.argv[1:])" "$@"')
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "LMBLOCKS_VENV": str(venv), "LMBLOCKS_STORAGE": "/shared/runs",
           "MLFLOW_TRACKING_URI": "http://mlflow:5000", "SLURM_JOB_NODELIST": "node[1-3]",
           "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_PER_TASK": "1", "START_WAIT": "0",
           "LMBLOCKS_ARGS": "--family opt --sizes all --layers all"}
    proc = subprocess.run(["bash", str(DEPLOY / "slurm.sbatch")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # the worker nodes' sruns run in the background (``--block``: they outlive the script);
    # under load their lines may land after the script ended
    deadline = time.time() + 20
    while (len([c for c in log.read_text().splitlines() if c.startswith("ray ")]) < 3
           and time.time() < deadline):
        time.sleep(0.1)
    calls = log.read_text().splitlines()
    # the head's and the workers' ray starts are all in the background: with START_WAIT=0
    # their lines may land in any order (the script's order is the file's, checked below)
    rays = sorted(c for c in calls if c.startswith("ray "))
    assert rays[-1].startswith("ray start --head --node-ip-address=10.1.2.3 --port=6379")
    assert rays[:-1] == ["ray start --address=10.1.2.3:6379 --num-cpus=16 --num-gpus=1 --block"] * 2
    script = (DEPLOY / "slurm.sbatch").read_text()
    assert script.index("ray start --head --node-ip") < script.index("ray start --address=")
    assert sum("-w node2" in c or "-w node3" in c for c in calls if c.startswith("srun")) == 2
    assert [c for c in calls if c.startswith("lmblocks-sweep")][-1] == ("lmblocks-sweep --address 10.1.2.3:6379 --storage /shared/runs "
                         "--family opt --sizes all --layers all")
    # the directives SLURM reads
    directives = [line for line in (DEPLOY / "slurm.sbatch").read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "#SBATCH --tasks-per-node=1" in directives
    assert any(d.startswith("#SBATCH --nodes=") for d in directives)


def test_the_slurm_script_refuses_to_start_without_its_settings(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("LMBLOCKS_VENV", "LMBLOCKS_STORAGE", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run(["bash", str(DEPLOY / "slurm.sbatch")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "set LMBLOCKS_VENV" in proc.stderr
