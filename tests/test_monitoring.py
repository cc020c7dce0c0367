"""Metrics through a real Prometheus, every dashboard query against it, and the Compose file's shape."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}


@pytest.fixture(scope="module")
async def prometheus(server, settings, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "coderund", "static_configs": [{"targets": [f"127.0.0.1:{settings.port}"]}]}],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(folder / "log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(base, path="/-/ready")
    except AssertionError:
        process.kill()
        raise AssertionError("Prometheus did not start: " + (folder / "log").read_text()[-500:]) from None
    yield base
    process.terminate()
    process.wait(30)


async def query(base: str, expr: str) -> list:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


async def eventually(base: str, expr: str, check, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while True:
        result = await query(base, expr)
        if check(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(1)


@pytest.fixture(scope="module")
async def traffic(server, prometheus):
    """Two rounds of tasks of each kind, a scrape apart: a rate needs a counter seen before and after."""
    from tests.conftest import Api

    await eventually(prometheus, 'up{job="coderund"}', lambda r: bool(r))
    async with aiohttp.ClientSession() as session:
        api = Api(session, server)
        token = await api.user("metrics")
        await api.call("POST", "/login", json={"username": "nobody_here", "password": "password1"})
        await api.call("GET", "/no-such-route")
        for round_ in (1, 2):
            await asyncio.gather(
                api.run(token, language="python", code="print(1)"),
                api.run(token, language="python", code="raise SystemExit(2)"),
                api.run(token, language="c", code="int main(void) { return 0; }"),
                api.run(token, language="go", code="package main\nfunc main() {}\n"),
            )
            await eventually(prometheus, "sum(coderund_tasks_finished_total)",
                             lambda r, n=4 * round_: bool(r) and float(r[0]["value"][1]) >= n)
    return token


async def test_prometheus_scrapes_coderund_and_task_counters_move(prometheus, traffic):
    up = await eventually(prometheus, 'up{job="coderund"}', lambda r: r and r[0]["value"][1] == "1")
    assert up and up[0]["value"][1] == "1"
    finished = await query(prometheus, "sum(coderund_tasks_finished_total)")
    assert float(finished[0]["value"][1]) >= 8
    verdicts = await query(prometheus, "sum by (verdict) (coderund_tasks_finished_total)")
    assert {"ok", "runtime_error"} <= {r["metric"]["verdict"] for r in verdicts}
    routes = await query(prometheus, "sum by (route) (coderund_http_requests_total)")
    names = {r["metric"]["route"] for r in routes}
    assert "/result/{task_id}" in names and "unmatched" in names
    assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", name) for name in names)  # no raw ids
    build = await query(prometheus, "coderund_build_info")
    assert build and build[0]["metric"]["version"]


async def test_every_dashboard_query_runs_and_most_show_data(prometheus, traffic):
    assert DASHBOARDS, "no dashboards under grafana/dashboards"
    expressions = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["title"] and dashboard["panels"]
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"unsubstituted variable in {panel['title']}: {expr}"
                expressions.append((panel["title"], expr))
    # Rates need two scrapes after the traffic; give Prometheus a few seconds.
    rate = await eventually(prometheus, "sum(rate(coderund_tasks_finished_total[30s]))",
                            lambda r: bool(r) and float(r[0]["value"][1]) > 0)
    assert float(rate[0]["value"][1]) > 0
    empty = [title for title, expr in expressions if not await query(prometheus, expr)]
    assert len(empty) <= len(expressions) // 5, f"panels without data: {empty}"


def test_grafana_reads_the_prometheus_of_the_compose_file():
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
