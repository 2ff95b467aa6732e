"""Coverage in a run: benchmarks measure without a tracer, and the §10 figure comes from pytest-cov."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import coverage
import pytest

from harness.report import coverage as coverage_run


def _module(folder: Path, name: str, body: str) -> ModuleType:
    path = folder / f"{name}.py"
    path.write_text(body, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_programs_started_meanwhile_get_no_coverage_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVERAGE_PROCESS_CONFIG", "{}")
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    with coverage_run.uninstrumented():
        assert "COVERAGE_PROCESS_CONFIG" not in os.environ
    assert os.environ["COVERAGE_PROCESS_CONFIG"] == "{}"


def test_code_run_inside_is_not_traced_and_tracing_resumes_after(tmp_path: Path) -> None:
    inside = _module(tmp_path, "cov_probe_inside", "def run():\n    return 1\n")
    outside = _module(tmp_path, "cov_probe_outside", "def run():\n    return 2\n")
    # a nested collector of our own: coverage stacks collectors, so the run's own one resumes after
    probe = coverage.Coverage(data_file=None, source=[str(tmp_path)], config_file=False)
    probe.start()
    try:
        with coverage_run.uninstrumented():
            inside.run()
        outside.run()
    finally:
        probe.stop()
    data = probe.get_data()
    assert 2 not in (data.lines(str(tmp_path / "cov_probe_inside.py")) or [])
    assert 2 in (data.lines(str(tmp_path / "cov_probe_outside.py")) or [])


def test_only_benchmarks_and_soak_runs_are_uninstrumented(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    perf: p\n    soak: s\n    unit: u\n"
    )
    items = pytester.getitems(
        """
        import pytest

        @pytest.mark.perf
        def test_bench(): pass

        @pytest.mark.soak
        def test_soak(): pass

        @pytest.mark.unit
        def test_unit(): pass
        """
    )
    assert {item.name: coverage_run.is_uninstrumented(item) for item in items} == {
        "test_bench": True,
        "test_soak": True,
        "test_unit": False,
    }


def test_the_figure_is_read_from_pytest_cov_when_it_measured(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    config = pytester.parseconfig()  # no --cov: pytest-cov registers nothing
    assert coverage_run.measured_total(config) is None

    class FinishedCoverage:
        cov_total = 83.4

    config.pluginmanager.register(FinishedCoverage(), "_cov")
    assert coverage_run.measured_total(config) == pytest.approx(83.4)


def test_children_keep_the_configuration_they_had_when_a_test_moved_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "coverage.toml"
    config.write_text('[tool.coverage.run]\ndata_file = ".probe-coverage"\npatch = ["subprocess"]\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    probe = coverage.Coverage(data_file=None, config_file=str(config))
    probe.start()
    try:
        before = os.environ["COVERAGE_PROCESS_CONFIG"]
        moved = tmp_path / "elsewhere"
        moved.mkdir()
        with coverage_run.uninstrumented():
            os.chdir(moved)  # as an in-process pytest run does
        after = os.environ["COVERAGE_PROCESS_CONFIG"]
    finally:
        probe.stop()
    assert after == before
