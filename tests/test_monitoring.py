"""The monitoring role's files, rendered on the controller (roles/monitoring/tasks/render.yml) for a
small GPU inventory: Prometheus' configuration passes `promtool check config`, scrapes Ray through
the service-discovery file Ray writes, every node's exporter and the DCGM exporter on GPU nodes
only; the listen address and retention are settings; the DCGM unit passes `systemd-analyze verify`.

The DCGM exporter itself is NOT exercised anywhere in this project: it is not packaged by Debian and
these machines have no GPU. Its unit is verified with an empty stand-in executable at the binary's
path (systemd-analyze checks that ExecStart's program exists).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}

# Two A10 nodes, as inventory/production declares its nodes, and one node without GPUs.
INVENTORY = {
    "all": {"children": {
        "ray_head": {"hosts": {"gpu-0": {"ansible_host": "10.200.0.1"}}},
        "ray_workers": {"hosts": {"gpu-1": {"ansible_host": "10.200.0.2"},
                                  "cpu-0": {"ansible_host": "10.200.0.3", "gpufleet_gpus": {"count": 0},
                                            "gpufleet_cpu_memory_mib": 16000}}},
    }, "vars": {"gpufleet_gpus": {"count": 4, "model": "A10", "memory_mib": 23028}}},
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: sandbox/install-host.sh installs Debian's prometheus package (make sandbox-host)"
    return path


def render(tmp_path: Path, *extra: str) -> Path:
    inventory = tmp_path / "inventory"
    inventory.mkdir(exist_ok=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(INVENTORY))
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([
        {"name": "Plan", "ansible.builtin.import_playbook": str(REPO / "playbooks/plan.yml")},
        {"name": "Render monitoring", "hosts": "localhost", "connection": "local", "gather_facts": False,
         "tasks": [{"name": "Render",
                    "ansible.builtin.include_role": {"name": "monitoring", "tasks_from": "render.yml"},
                    "vars": {"monitoring_plan": "{{ gpufleet_plan }}",
                             "monitoring_render_dir": str(tmp_path / "out")}}]},
    ], sort_keys=False))
    run = subprocess.run([BIN / "ansible-playbook", "-i", inventory, playbook, "-e", "strategy=baseline", *extra],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return tmp_path / "out"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render(tmp_path_factory.mktemp("monitoring"))


def test_argument_specs_mirror_defaults():
    defaults = yaml.safe_load((REPO / "roles/monitoring/defaults/main.yml").read_text())
    specs = yaml.safe_load((REPO / "roles/monitoring/meta/argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"]["options"]
    assert set(options) == set(defaults), set(options) ^ set(defaults)
    for name, spec in options.items():
        assert spec.get("description") and spec.get("default") == defaults[name], name
        assert name.startswith("monitoring_"), name


def test_prometheus_config_passes_promtool_and_scrapes_every_node(rendered, tmp_path):
    config = rendered / "prometheus.yml"
    # rule_files point at the server's folder: check the repository's rules beside the config
    data = yaml.safe_load(config.read_text())
    assert data["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump({**data, "rule_files": [str(REPO / "monitoring/rules/gpufleet.rules.yml")]}))
    run = subprocess.run([promtool(), "check", "config", local], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 8 rules found" in run.stdout, run.stdout

    jobs = {j["job_name"]: j for j in data["scrape_configs"]}
    assert set(jobs) == {"prometheus", "ray", "node", "dcgm"}
    # the file Ray's PrometheusServiceDiscoveryWriter keeps in its temp folder (ray/_private/metrics_agent.py)
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    def by_host(configs):
        return sorted(configs, key=lambda c: c["labels"]["host"])
    assert by_host(jobs["node"]["static_configs"]) == [
        {"targets": [f"10.200.0.{i}:9100"], "labels": {"host": h}}
        for i, h in ((3, "cpu-0"), (1, "gpu-0"), (2, "gpu-1"))]
    assert by_host(jobs["dcgm"]["static_configs"]) == [
        {"targets": [f"10.200.0.{i}:9400"], "labels": {"host": h}} for i, h in ((1, "gpu-0"), (2, "gpu-1"))]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9090"]}]


def test_prometheus_listens_on_loopback_and_keeps_15_days_unless_set(rendered, tmp_path):
    assert (rendered / "prometheus.default").read_text().splitlines()[-1] == (
        'ARGS="--config.file=/etc/prometheus/prometheus.yml --web.listen-address=127.0.0.1:9090 '
        '--storage.tsdb.retention.time=15d"')
    other = render(tmp_path, "-e", "gpufleet_prometheus_listen_address=0.0.0.0",
                   "-e", "monitoring_prometheus_retention_time=30d", "-e", "monitoring_prometheus_retention_size=50GB")
    assert (other / "prometheus.default").read_text().splitlines()[-1] == (
        'ARGS="--config.file=/etc/prometheus/prometheus.yml --web.listen-address=0.0.0.0:9090 '
        '--storage.tsdb.retention.time=30d --storage.tsdb.retention.size=50GB"')
    # its own scrape goes to loopback when it listens on every address
    jobs = {j["job_name"]: j for j in yaml.safe_load((other / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9090"]}]


def test_node_exporters_bind_their_node_and_read_the_textfile_folder(rendered):
    for i, host in ((1, "gpu-0"), (2, "gpu-1"), (3, "cpu-0")):
        assert (rendered / host / "prometheus-node-exporter.default").read_text().splitlines()[-1] == (
            f'ARGS="--web.listen-address=10.200.0.{i}:9100 '
            '--collector.textfile.directory=/var/lib/prometheus/node-exporter"')


def test_plan_metrics_are_rendered_from_the_plan(rendered):
    text = (rendered / "gpufleet_plan.prom").read_text()
    run = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sum(line.startswith("gpufleet_plan_device_planned_mib{") for line in text.splitlines()) == 9
    assert 'gpufleet_plan_node_info{host="cpu-0",ip="10.200.0.3",group="worker"} 1' in text


def test_dcgm_unit_only_on_gpu_nodes_and_verified(rendered, tmp_path):
    assert not (rendered / "cpu-0" / "dcgm-exporter.service").exists()
    units = [rendered / h / "dcgm-exporter.service" for h in ("gpu-0", "gpu-1")]
    assert "ExecStart=/usr/bin/dcgm-exporter --address=10.200.0.2:9400 " \
           "--collectors=/etc/dcgm-exporter/default-counters.csv" in units[1].read_text().splitlines()
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: sandbox/install-host.sh installs systemd"
    # The exporter is not installable here: an empty stand-in at the binary's path, in a copy of the unit.
    stand_in = tmp_path / "dcgm-exporter"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    for unit in units:
        copy = tmp_path / unit.parent.name / unit.name
        copy.parent.mkdir()
        copy.write_text(unit.read_text().replace("/usr/bin/dcgm-exporter", str(stand_in)))
        run = subprocess.run([analyze, "verify", copy], capture_output=True, text=True)
        assert run.returncode == 0 and unit.name not in run.stderr, run.stdout + run.stderr


# --- the Grafana dashboard and provisioning files (monitoring/grafana) ---------------------------

DASHBOARD = REPO / "monitoring/grafana/dashboards/gpufleet.json"


def dashboard_targets() -> list:
    import json
    return [(panel["title"], t) for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


def test_every_panel_query_parses(tmp_path):
    """Each panel query becomes a recording rule so that promtool parses it (Grafana is not installable here)."""
    targets = dashboard_targets()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"gpufleet:panel_{i}", "expr": t["expr"]} for i, (_, t) in enumerate(targets)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    run = subprocess.run([promtool(), "check", "rules", tmp_path / "panels.yml"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(targets)} rules found" in run.stdout


def test_dashboard_uses_the_provisioned_data_source():
    import json
    uid = yaml.safe_load((REPO / "monitoring/grafana/provisioning/datasources/gpufleet.yml").read_text())[
        "datasources"][0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {uid}
    assert {t["datasource"]["uid"] for _, t in dashboard_targets()} == {uid}
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles)) and all(p["targets"] for p in dash["panels"])
    provider = yaml.safe_load((REPO / "monitoring/grafana/provisioning/dashboards/gpufleet.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


RAY_DASHBOARDS = sorted((REPO / "monitoring/grafana/dashboards/ray").glob("*.json"))


def ray_queries(path: Path) -> list:
    """The dashboard's queries with its Grafana variables filled as "all" (regex .*) and a 5m interval."""
    import json
    import re
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: "5m" if m.group(1) in ("interval", "__rate_interval", "__interval")
                   else ".*", e) for e in exprs]


@pytest.mark.parametrize("path", RAY_DASHBOARDS, ids=[p.stem for p in RAY_DASHBOARDS])
def test_rays_generated_dashboards_parse(path, tmp_path):
    """Ray's own dashboards (generated by Ray 2.60 on the sandbox head) are shipped as Ray wrote them;
    their queries parse. They are not run query by query against the sandbox (many need GPUs or
    features the sandbox does not use)."""
    exprs = ray_queries(path)
    assert exprs
    rules = {"groups": [{"name": "ray", "rules": [{"record": f"ray:q_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "ray.yml").write_text(yaml.safe_dump(rules))
    run = subprocess.run([promtool(), "check", "rules", tmp_path / "ray.yml"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
