"""The keys under which the plugin keeps the run's state on pytest's config and items."""

from __future__ import annotations

import pytest

from harness.report.results import RunResults
from harness.sut.launch import ProgramLauncher
from harness.sut.manifest import Manifest
from harness.verdicts import Verdicts

MANIFEST_KEY = pytest.StashKey[Manifest]()
RESULTS_KEY = pytest.StashKey[RunResults]()
LAUNCHER_KEY = pytest.StashKey[ProgramLauncher]()  # on an item: the launcher its test used
VERDICTS_KEY = pytest.StashKey[Verdicts]()  # on an item: its per-scenario checks
