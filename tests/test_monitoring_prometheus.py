"""The shipped alerts in a real Prometheus: the reference stack (connector on a freezable mock
exchange, live_server) scraped every second by Debian's prometheus with deploy/prometheus/alerts.yml
as shipped; the upstream freezes (as under SIGSTOP) and ExchangeConnectorNotServing and
ExchangeConnectorDataAgeHigh go `firing` within their `for` plus a scrape and an evaluation of the
moment their condition held; it thaws and they resolve.

This judges the reference's operations, not a SUT: it is a project test, outside the catalogue.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml

from harness.doubles.mock_exchange import MockExchangeServer
from harness.ports import free_port
from harness.sut.connector import ConnectorFactory
from harness.sut.launch import ProgramLauncher
from harness.sut.manifest import DEFAULT_MANIFEST, load_manifest
from harness.sut.prometheus import sample_value, scrape_sync
from tests.monitoring import RULES, alerts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

INTERVAL_S = 1.0  # scrape and evaluation interval of the test's Prometheus
NOT_SERVING = "ExchangeConnectorNotServing"
DATA_AGE = "ExchangeConnectorDataAgeHigh"
WATCHED = (NOT_SERVING, DATA_AGE)
HUNG_DETECTED_WITHIN_S = 10.0  # rule C31: a frozen upstream is given up within 10 s
AGE_NEAR_BOUND_S = 4.0  # the data-age alert's threshold in alerts.yml
# Firing comes one scrape (the condition reaches the TSDB) and one evaluation (it turns pending)
# after the condition holds, then `for` later; the slack covers this test's 0.2 s polling and the
# Prometheus API answering under a loaded machine.
SLACK_S = 3.0
RESOLVE_WITHIN_S = 20.0  # thawed: the connector reconnects (backoff), then a scrape and an evaluation
BUDGET_S = 45.0  # freeze to firing: what this test can wait within its timeout
POLL_S = 0.2


def _for_seconds(alert: str) -> float:
    """The shipped `for:` of an alert, in seconds."""
    raw = next(rule.raw for rule in alerts() if rule.name == alert).get("for", "0s")
    return float(promql_parser.parse_duration(str(raw)).total_seconds())


@dataclass
class Prometheus:
    url: str
    log: Path
    process: subprocess.Popen[bytes]
    client: httpx.Client = field(default_factory=lambda: httpx.Client(trust_env=False, timeout=5.0))

    def get(self, path: str, **params: str) -> dict[str, object]:
        response = self.client.get(self.url + path, params=params)
        response.raise_for_status()
        answer = response.json()
        assert answer.get("status") == "success", f"{path}: {answer}"
        data = answer["data"]
        assert isinstance(data, dict)
        return data

    def instant(self, query: str) -> list[str]:
        """The values of an instant query's series."""
        found = self.get("/api/v1/query", query=query).get("result")
        assert isinstance(found, list)
        return [str(series["value"][1]) for series in found]

    def alert_states(self) -> dict[str, str]:
        """alertname -> state (pending or firing) of the active alerts."""
        found = self.get("/api/v1/alerts").get("alerts")
        assert isinstance(found, list)
        return {str(alert["labels"]["alertname"]): str(alert["state"]) for alert in found}

    def targets_up(self) -> dict[str, str]:
        found = self.get("/api/v1/targets").get("activeTargets")
        assert isinstance(found, list)
        return {str(target["labels"]["job"]): str(target["health"]) for target in found}

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def prometheus_binary() -> str:
    """Debian's prometheus server; the test skips where it is missing."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "environment: prometheus not found (Debian's prometheus package: apt-get install prometheus; "
            ".ci/run installs it)"
        )
    return binary


@contextmanager
def prometheus(workdir: Path, connector_metrics: int, live_server_http: int) -> Iterator[Prometheus]:
    """Debian's prometheus on 127.0.0.1, scraping the stack every second with the shipped rules;
    stopped (and its process group killed if need be) however the block ends."""
    binary = prometheus_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    interval = f"{int(INTERVAL_S)}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "exchange_connector",
                "static_configs": [{"targets": [f"127.0.0.1:{connector_metrics}"]}],
            },
            {"job_name": "live_server", "static_configs": [{"targets": [f"127.0.0.1:{live_server_http}"]}]},
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log, process)
    try:
        deadline = time.monotonic() + 20.0
        while True:
            assert process.poll() is None, f"prometheus exited with {process.returncode}: {server.tail()}"
            with suppress(httpx.HTTPError):
                if server.client.get(server.url + "/-/ready").status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus not ready within 20 s: {server.tail()}"
            time.sleep(0.1)
        yield server
    finally:
        server.client.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _connector_sample(port: int) -> dict[str, float | None]:
    """The connector's serving, data-age and stale gauges, read from its /metrics."""
    text = scrape_sync(port)
    names = ("exchange_connector_serving", "exchange_connector_data_age_seconds", "exchange_connector_stale")
    return {name: sample_value(text, name) for name in names}


def test_not_serving_and_data_age_alerts_fire_on_a_frozen_upstream_and_resolve(tmp_path: Path) -> None:
    prometheus_binary()  # skip before starting anything where there is none
    waits = {alert: _for_seconds(alert) for alert in WATCHED}
    assert HUNG_DETECTED_WITHIN_S + max(waits.values()) + 2 * INTERVAL_S + SLACK_S <= BUDGET_S, (
        f"the shipped `for:` of {waits} is longer than this test can wait ({BUDGET_S:g} s from the freeze)"
    )
    launcher = ProgramLauncher(load_manifest(DEFAULT_MANIFEST), tmp_path / "programs")
    mock = MockExchangeServer(freezable=True).start()
    connectors = ConnectorFactory(launcher, free_port, mock)
    try:
        connector = connectors.start_sync()  # ready, both upstream subscriptions open
        http_port = free_port()
        launcher.start("live_server", {"connector": connector.address, "http_port": http_port})
        with prometheus(tmp_path / "prometheus", connector.metrics_port, http_port) as server:
            _run(server, mock, connector.metrics_port, waits, launcher)
    finally:
        mock.thaw()
        try:
            launcher.stop_all()  # live_server, then the connector: each must exit 0
            connectors.finish_sync()  # and the connector must have closed its upstream subscriptions
        finally:
            mock.stop()


def _run(
    server: Prometheus,
    mock: MockExchangeServer,
    metrics_port: int,
    waits: dict[str, float],
    launcher: ProgramLauncher,
) -> None:
    def context() -> str:
        return f"alerts {server.alert_states()}; prometheus log: {server.tail()}\n{launcher.log_tails(10)}"

    # Both programs scraped, the connector seen serving by Prometheus, nothing watched active.
    deadline = time.monotonic() + 15.0
    while True:
        up = server.targets_up()
        serving = server.instant("exchange_connector_serving")
        if up == {"exchange_connector": "up", "live_server": "up"} and serving == ["1"]:
            break
        assert time.monotonic() < deadline, f"targets {up}, serving {serving} after 15 s; {context()}"
        time.sleep(POLL_S)
    active = {name: state for name, state in server.alert_states().items() if name in WATCHED}
    assert not active, f"expected no watched alert before the freeze, got {active}; {context()}"

    frozen_at = time.monotonic()
    mock.freeze()
    onset: dict[str, float] = {}
    fired: dict[str, float] = {}
    deadline = frozen_at + BUDGET_S
    while len(fired) < len(WATCHED):
        now = time.monotonic()
        sample = _connector_sample(metrics_port)
        if NOT_SERVING not in onset and sample.get("exchange_connector_serving") == 0:
            onset[NOT_SERVING] = now
        if DATA_AGE not in onset and (
            (sample.get("exchange_connector_data_age_seconds") or 0.0) > AGE_NEAR_BOUND_S
            or sample.get("exchange_connector_stale") == 1
        ):
            onset[DATA_AGE] = now
        for name, state in server.alert_states().items():
            if name in WATCHED and state == "firing" and name not in fired:
                fired[name] = time.monotonic()
        assert time.monotonic() < deadline, (
            f"after {BUDGET_S:g} s of a frozen upstream: conditions held at "
            f"{ {k: round(v - frozen_at, 1) for k, v in onset.items()} } s, fired at "
            f"{ {k: round(v - frozen_at, 1) for k, v in fired.items()} } s; {context()}"
        )
        time.sleep(POLL_S)
    for alert in WATCHED:
        assert alert in onset, f"{alert} fired but this test never saw its condition hold; {context()}"
        late = fired[alert] - onset[alert]
        bound = waits[alert] + 2 * INTERVAL_S + SLACK_S
        print(
            f"[monitoring] {alert}: condition {onset[alert] - frozen_at:.1f} s after the freeze, "
            f"firing {late:.1f} s later (for {waits[alert]:g} s)"
        )
        assert late <= bound, (
            f"{alert}: firing {late:.1f} s after its condition held, expected within its for "
            f"({waits[alert]:g} s) + a scrape and an evaluation ({2 * INTERVAL_S:g} s) + {SLACK_S:g} s"
        )
        assert late >= waits[alert] - INTERVAL_S, (
            f"{alert}: firing {late:.1f} s after its condition held, before its for of {waits[alert]:g} s"
        )

    thawed_at = time.monotonic()
    mock.thaw()
    while True:
        active = {name: state for name, state in server.alert_states().items() if name in WATCHED}
        if not active:
            break
        assert time.monotonic() - thawed_at < RESOLVE_WITHIN_S, (
            f"still active {RESOLVE_WITHIN_S:g} s after the thaw: {active}; {context()}"
        )
        time.sleep(POLL_S)
    print(f"[monitoring] both alerts resolved {time.monotonic() - thawed_at:.1f} s after the thaw")
