"""The pure parts of monitoring/render_panel.py: legends, Grafana variables and the SVG built from a
query_range answer written by hand in the shape Prometheus returns. No network."""
from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("render_panel", REPO / "monitoring" / "render_panel.py")
rp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rp)

SVG = "{http://www.w3.org/2000/svg}"
START = 1718000000.0
# What /api/v1/query_range answers for `sum by (route, status_code) (rate(ray_serve_num_http_requests_total[5m]))`:
# values are [unix time, "string"] pairs; "NaN" happens (e.g. histogram_quantile over no samples).
PAYLOAD = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [
            {"metric": {"route": "/v1", "status_code": "200"},
             "values": [[START + 5 * i, f"{0.4 + 0.01 * i:.2f}"] for i in range(12)]},
            {"metric": {"route": "/v1", "status_code": "401"},
             "values": [[START, "0"], [START + 5, "NaN"], [START + 10, "0.0333"], [START + 15, "0.0333"]]},
        ],
    },
}
TARGET = {"refId": "B", "expr": "sum by (route, status_code) (rate(ray_serve_num_http_requests_total[5m]))",
          "legendFormat": "{{route}} {{status_code}}"}


def test_legend_substitutes_labels():
    labels = {"__name__": "ray_vllm_kv_cache_usage_perc", "model_name": "smollm2", "ReplicaId": "abc12"}
    assert rp.legend("{{model_name}} {{ReplicaId}}", labels) == "smollm2 abc12"
    assert rp.legend("{{ model_name }} p95", labels) == "smollm2 p95"
    assert rp.legend("used {{ip}}:{{model_name}}", labels) == "used :smollm2"  # Grafana: a missing label is empty
    assert rp.legend(None, labels) == 'ray_vllm_kv_cache_usage_perc{ReplicaId="abc12", model_name="smollm2"}'
    assert rp.legend("", {"host": "n1"}) == '{host="n1"}'


def test_substitute_grafana_variables_but_not_regex_groups():
    expr = 'label_replace(rate(x[$__rate_interval]), "device", "$1", "GpuIndex", "(.*)") > ${__interval_ms}'
    assert rp.substitute(expr, "5s", 10) == 'label_replace(rate(x[1m]), "device", "$1", "GpuIndex", "(.*)") > 5000'
    assert rp.substitute("avg_over_time(x[$__interval])", "5s", 10) == "avg_over_time(x[5s])"
    with pytest.raises(SystemExit, match=r"\$instance"):
        rp.substitute('up{instance="$instance"}', "5s", 10)


def test_every_dashboard_expr_substitutes():
    dashboard = json.loads(rp.DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            rp.substitute(target["expr"], "5s", 10)


def test_svg_from_query_range_payload():
    series = rp.series_of(PAYLOAD, TARGET)
    assert [name for name, _ in series] == ["/v1 200", "/v1 401"]
    svg = rp.render_svg("Requests per second", "reqps", series, START, START + 60, "rendered from ... expr: B: x")
    root = ET.fromstring(svg)
    paths = root.findall(f"{SVG}path")
    assert len(paths) == 2
    assert paths[1].get("d").count("M") == 2  # the NaN is a gap, not a zero
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Requests per second" in texts
    assert "/v1 200" in texts and "/v1 401" in texts
    assert any(t and t.endswith("req/s") for t in texts)
    assert any(t and t.startswith("rendered from") for t in texts)


def test_empty_result_raises():
    empty = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    with pytest.raises(rp.NoData, match="no series"):
        rp.series_of(empty, TARGET)
    only_nan = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"model_name": "minilm"}, "values": [[START, "NaN"], [START + 5, "NaN"]]}]}}
    with pytest.raises(rp.NoData):
        rp.series_of(only_nan, TARGET)
    with pytest.raises(rp.NoData, match="matrix"):
        rp.series_of({"status": "error", "errorType": "bad_data", "error": "parse error"}, TARGET)


def test_unit_labels():
    assert rp.label(0.25, "percentunit") == "25 %"
    assert rp.label(0.05, "s") == "50 ms"
    assert rp.label(2, "s") == "2 s"
    assert rp.label(1.5, "reqps") == "1.5 req/s"
    assert rp.label(3, "short") == "3"
