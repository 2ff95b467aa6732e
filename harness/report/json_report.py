"""The conformance report as JSON: every scenario with its status, the §10 table (the same rows as
the Markdown and HTML reports), the measured figures and each test's outcome."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.catalogue import Catalogue
from harness.report.criteria import criteria_rows
from harness.report.results import RunResults


def render_json(results: RunResults, catalogue: Catalogue) -> dict[str, Any]:
    import grpc

    status = results.scenario_status()
    scenarios = []
    for scenario in catalogue.scenarios:
        if scenario.kind == "criterion":
            continue
        ran = status.get(scenario.id)
        scenarios.append(
            {
                "id": scenario.id,
                "section": scenario.section,
                "level": scenario.level,
                "kind": scenario.kind,
                "subject": scenario.subject,
                "title": scenario.title,
                "status": ran.outcome if ran else ("pending" if scenario.pending else "not-run"),
                "reason": ran.reason if ran else "",
                "duration_s": round(ran.duration_s, 3) if ran else None,
                "tests": sorted({o.nodeid for o in results.outcomes if scenario.id in o.scenario_ids}),
            }
        )
    criteria = [
        {
            "id": row.criterion.id,
            "title": row.criterion.title,
            "target": row.target,
            "measured": row.measured,
            "status": row.verdict,
            "counts": row.counts,
        }
        for row in criteria_rows(results, catalogue)
    ]
    return {
        "spec": catalogue.spec,
        "sut": {"name": results.sut_name, "manifest_sha256": results.sut_digest},
        "environment": {
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "machine": platform.machine(),
            "system": platform.platform(),
            "cpus": os.cpu_count() or 1,
        },
        "started_at": results.started_at,
        "duration_s": round(time.time() - results.started_at, 3),
        "criteria": criteria,
        "scenarios": scenarios,
        "metrics": [asdict(m) for m in results.metrics],
        "tests": [asdict(o) for o in results.outcomes],
    }


def write_json(results: RunResults, path: Path, catalogue: Catalogue) -> None:
    """Written whole to a temporary file first, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(render_json(results, catalogue), indent=2), encoding="utf-8")
    tmp.replace(path)
