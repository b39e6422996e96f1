"""Fixed costs of a sweep: what the CLI and a trial import.

Each check runs in a fresh interpreter: ``sys.modules`` of the test process already holds
whatever other tests imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A family's modeling code (transformers/models/<family>/modeling_<family>.py); ``auto``'s
# modeling_auto is a table of names that transformers itself imports, not a family.
MODELING = re.compile(r"^transformers\.models\.(?!auto\.)\w+\.modeling_\w+$")


def _modeling_modules_after(*steps: str) -> list[list[str]]:
    """Runs ``steps`` one after another in one fresh interpreter: the family modeling modules
    imported after each."""
    show = ("import json, sys\nprint(json.dumps(sorted(m for m in sys.modules "
            "if m.startswith('transformers.'))))\n")
    probe = "".join(f"{step}\n{show}" for step in steps)
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    seen = [json.loads(line) for line in out.splitlines() if line.startswith("[")]
    return [[m for m in modules if MODELING.match(m)] for modules in seen]


def test_the_cli_and_a_plan_import_no_other_family_s_modeling_code():
    registered, planned = _modeling_modules_after(
        "import encoders.lm.families, orchestrator.cli",
        """
from orchestrator.plan import build_plan, plan_table
from orchestrator.spec import SweepSpec
plan = build_plan(SweepSpec(families=("opt",), sizes=("125m",), controls=("pretrained",)))
plan_table(plan)  # the dry run's table: a layer's parameters are the registry's data
""")
    assert registered == []  # every family registered, no modeling code
    assert planned == []  # nor planning (tests/test_registry_data.py checks the numbers)


def test_a_trial_block_imports_only_its_own_family():
    [built] = _modeling_modules_after("""
from encoders.lm.controls import build_block
block, _ = build_block(family="minilm", size="l6", layers=(5,), control="random", seed=0,
                       visual_dim=64)
assert block is not None
""")
    assert built == ["transformers.models.bert.modeling_bert"]


def test_class_references_resolve_to_the_classes_and_bad_ones_fail_at_registration():
    import dataclasses

    import pytest
    from transformers.models.opt.modeling_opt import OPTDecoderLayer, OPTModel

    from encoders.lm.registry import get_family, register_family, resolve

    opt = get_family("opt")
    assert opt.layer_class is OPTDecoderLayer and opt.model_class is OPTModel
    assert opt.config_class.model_type == "opt"
    assert resolve(opt.layer) is OPTDecoderLayer
    with pytest.raises(ValueError, match="bad class reference"):
        register_family(dataclasses.replace(opt, name="opt-bad", layer="OPTDecoderLayer"))
