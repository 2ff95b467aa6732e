"""`opensqt-conform`: the suite's command line, and its pytest settings kept in step with the
repository's pytest.ini."""

from __future__ import annotations

import configparser
from pathlib import Path

from harness import cli

ROOT = Path(__file__).resolve().parent.parent


def _ini(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return {key: " ".join(value.split()) for key, value in parser["pytest"].items()}


def test_the_installed_settings_match_the_repository_ones() -> None:
    suite, repository = _ini(cli.SUITE_INI), _ini(ROOT / "pytest.ini")
    for key, value in suite.items():
        if key == "addopts":
            missing = set(value.split()) - set(repository[key].split())
            assert not missing, f"pytest.ini addopts lacks {sorted(missing)} of harness/suite.ini"
        else:
            assert repository.get(key) == value, (
                f"pytest.ini {key}: expected {value!r}, got {repository.get(key)!r}"
            )


def test_the_command_runs_the_scenarios_with_the_suite_settings(tmp_path: Path) -> None:
    args = cli.pytest_args(["--sut", "my.toml", "--scenario", "4.2"], tmp_path)
    assert args[:2] == ["-c", str(cli.SUITE_INI)]
    assert args[-1] == str(cli.SPECS_DIR) and (cli.SPECS_DIR / "scenarios.yaml").is_file()
    assert args[args.index("--report-dir") + 1] == str(tmp_path / "reports")
    assert ["--sut", "my.toml", "--scenario", "4.2"] == args[-5:-1]


def test_a_report_dir_given_is_kept(tmp_path: Path) -> None:
    args = cli.pytest_args(["--report-dir", "elsewhere"], tmp_path)
    assert args.count("--report-dir") == 1 and args[args.index("--report-dir") + 1] == "elsewhere"
