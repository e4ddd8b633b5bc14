"""The alert rules (monitoring/rules/gpufleet.rules.yml): `promtool check rules` accepts them and
`promtool test rules` runs their unit tests (monitoring/rules/tests/gpufleet.test.yml). promtool
comes from Debian's prometheus package (sandbox/install-host.sh); without it these tests fail."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "monitoring/rules/gpufleet.rules.yml"
RULE_TESTS = REPO / "monitoring/rules/tests/gpufleet.test.yml"
ISSUE_ALERTS = {"GpufleetReplicaUnhealthy", "GpufleetKVCacheNearlyFull", "GpufleetGPUMemoryAbovePlan",
                "GpufleetNodeMissing", "GpufleetEndpoint5xx"}


def promtool(*args, cwd=REPO) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    assert path, "promtool missing: sandbox/install-host.sh installs Debian's prometheus package (make sandbox-host)"
    return subprocess.run([path, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts(path: Path) -> dict:
    return {r["alert"]: r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_checks_the_rules():
    run = promtool("check", "rules", RULES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in yaml.safe_load(RULES.read_text())['groups'])} rules found" \
        in run.stdout


def test_promtool_unit_tests_pass():
    run = promtool("test", "rules", RULE_TESTS)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_alert_is_unit_tested():
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert ISSUE_ALERTS <= set(alerts(RULES))
    assert set(alerts(RULES)) == tested
    # every alert is seen firing in at least one case, not only silent
    firing = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert firing == tested


@pytest.mark.parametrize("alert, old, new", [
    ("GpufleetKVCacheNearlyFull", "> 0.9", "> 0.8"),
    ("GpufleetKVCacheNearlyFull", "5m", "4m"),
    ("GpufleetGPUMemoryAbovePlan", "1.05 *", "1.0 *"),
    ("GpufleetEndpoint5xx", '"5.."', '"[45].."'),
    ("GpufleetReplicasBelowPlan", "<", "<="),
    ("GpufleetNodeMissing", "unless", "and"),
])
def test_the_unit_tests_catch_a_wrong_threshold(tmp_path, alert, old, new):
    """A rules file with one threshold changed fails the unit tests (so they test something)."""
    data = yaml.safe_load(RULES.read_text())
    rule = alerts_in(data)[alert]
    field = "for" if old == "5m" else "expr"
    assert old in rule[field], (alert, rule[field])
    rule[field] = rule[field].replace(old, new, 1)
    (tmp_path / "gpufleet.rules.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/gpufleet.test.yml").write_text(RULE_TESTS.read_text())
    run = promtool("test", "rules", "tests/gpufleet.test.yml", cwd=tmp_path)
    assert run.returncode != 0, run.stdout
    assert alert in run.stdout + run.stderr


def alerts_in(data: dict) -> dict:
    return {r["alert"]: r for g in data["groups"] for r in g["rules"] if "alert" in r}
