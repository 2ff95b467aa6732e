"""Parallel where it is safe: the scenarios that must run alone, and how pytest-xdist keeps them so.

A scenario whose catalogue entry says `exclusive: true` judges timing or resources, or stops
processes: it runs alone. Under pytest-xdist (`-n N`) every other test runs in parallel first;
then, once every worker but one has finished, that one worker runs the exclusive tests one after
the other while the others stand idle (ExclusiveLastScheduling). Without xdist the run is serial
and nothing changes.

The controller does not collect the tests: each worker writes the node IDs of its exclusive tests
to a file the controller names (workerinput "conform_exclusive"), before it sends its collection.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from harness import catalogue as catalogue_module
from harness.markers import scenario_ids

WORKER_INPUT_KEY = "conform_exclusive"


def is_exclusive(item: pytest.Item) -> bool:
    """The test judges a scenario the catalogue marks `exclusive`: it must run alone."""
    catalogue = catalogue_module.load()
    return any((s := catalogue.get(sid)) is not None and s.exclusive for sid in scenario_ids(item))


def xdist_active(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("xdist") and bool(getattr(config.option, "numprocesses", None))


def load_scheduling_class() -> type[Any]:
    from xdist.scheduler import LoadScheduling  # type: ignore[import-untyped]

    found: type[Any] = LoadScheduling
    return found


class ExclusiveScheduling:
    """The plugin that makes xdist run the exclusive tests alone (registered by harness.plugin)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.folder: Path | None = None
        if not hasattr(config, "workerinput"):
            self.folder = Path(tempfile.mkdtemp(prefix="conform-exclusive-"))
            config.add_cleanup(lambda: shutil.rmtree(self.folder or "", ignore_errors=True))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        assert self.folder is not None
        node.workerinput[WORKER_INPUT_KEY] = str(self.folder / f"{node.gateway.id}.json")

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getoption("dist") not in ("load", "no"):
            return None  # the user asked for another distribution: theirs
        assert self.folder is not None
        return make_scheduler(config, log, self.folder)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        workerinput: dict[str, Any] | None = getattr(self.config, "workerinput", None)
        if workerinput is None or WORKER_INPUT_KEY not in workerinput:
            return
        path = Path(str(workerinput[WORKER_INPUT_KEY]))
        exclusive = [item.nodeid for item in items if is_exclusive(item)]
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(exclusive), encoding="utf-8")
        os.replace(partial, path)


def read_exclusive(folder: Path) -> set[str]:
    """The exclusive node IDs the workers wrote (all workers collect the same tests)."""
    found: set[str] = set()
    for path in folder.glob("*.json"):
        found.update(str(nodeid) for nodeid in json.loads(path.read_text(encoding="utf-8")))
    return found


def make_scheduler(config: pytest.Config, log: Any, folder: Path) -> Any:
    base = load_scheduling_class()

    class ExclusiveLastScheduling(base):  # type: ignore[misc, valid-type]
        """LoadScheduling for the parallel tests; then the exclusive ones on one worker, alone."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            self.collection: list[str] | None
            self.maxschedchunk: int | None
            self.exclusive: list[int] = []
            self.alone: Any = None  # the worker that runs the exclusive tests
            self.released = False

        @property
        def tests_finished(self) -> bool:
            return bool(not self.exclusive and super().tests_finished)

        @property
        def has_pending(self) -> bool:
            return bool(self.exclusive or super().has_pending)

        def schedule(self) -> None:
            if self.collection is not None or not self.collection_is_completed:
                super().schedule()
                return
            wanted = read_exclusive(folder)
            collection = next(iter(self.node2collection.values()))
            self.exclusive = [i for i, nodeid in enumerate(collection) if nodeid in wanted]
            if not self.exclusive or not self._check_nodes_have_same_collection():
                self.exclusive = []
                super().schedule()
                return
            # as LoadScheduling sets up, but only the parallel tests are handed out now
            self.collection = list(collection)
            chosen = set(self.exclusive)
            self.pending[:] = [i for i in range(len(collection)) if i not in chosen]
            if self.maxschedchunk is None:
                self.maxschedchunk = len(collection)
            self.alone = self.nodes[0]
            for node in self.nodes:
                self.check_schedule(node)

        def check_schedule(self, node: Any, duration: float = 0) -> None:
            if not self.exclusive or self.pending:
                super().check_schedule(node, duration)
                return
            if node.shutting_down:
                return
            # every parallel test is handed out: the others stop; the alone one waits for them
            if node is not self.alone:
                node.shutdown()
            self._release_when_alone()

        def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            if self.exclusive and not self.pending:
                self._release_when_alone()

        def remove_node(self, node: Any) -> str | None:
            crashed: str | None = super().remove_node(node)
            if node is self.alone:
                self.alone = self.nodes[0] if self.nodes else None
                self.released = False
            if self.exclusive and not self.pending:
                self._release_when_alone()
            return crashed

        def _release_when_alone(self) -> None:
            if self.released or self.alone is None:
                return
            others = [n for n in self.nodes if n is not self.alone and self.node2pending[n]]
            if not others:
                self._release()

        def _release(self) -> None:
            node = self.alone
            if node is None or node.shutting_down:
                return
            self.released = True
            indices, self.exclusive = self.exclusive, []
            self.node2pending[node].extend(indices)
            node.send_runtest_some(indices)
            node.shutdown()

    return ExclusiveLastScheduling(config, log)


__all__ = ["ExclusiveScheduling", "is_exclusive", "read_exclusive", "xdist_active"]
