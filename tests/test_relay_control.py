"""The transparent-relay control: the reference connector behind a bytes-level relay
(tests/relay/relay_connector.py) is still correct by the contract, so it must pass every black-box
scenario that talks to the connector. A scenario that failed it would check how the reference writes
its bytes (when headers go out, how frames are split), not what the contract says.

Left out, with the reason: §6-§7 and the timing-bounded scenarios of the other sections (4.2.1.x23,
x27, x30: the relay adds a hop and a process on the same cores, so their bounds would measure the
relay too), §3.1/§4.1 (the client library against the suite's mock exchange: no connector involved)
and §5.2 (the Compose stack does not run the manifest's programs), and 4.2.1.x29 (rule C39 counts
the calls the connector refuses; under a burst of new connections the relay's own failed connections
are UNAVAILABLE statuses the connector never sees). No scenario is listed as a known failure: the
byte relay's buffers are bounded, so back-pressure (rules C13, C34) still reaches the connector. The
inner run uses three xdist workers, as `./conform` does: its scenarios wait on programs more than
they compute, and the outer run does nothing else meanwhile.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import catalogue
from tests.relay.manifest import relay_manifest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("3.2", "4.2", "5.1")
LEFT_OUT = ("specs/integration/test_connector_admission.py",)  # 4.2.1.x29
KNOWN_FAILURES: dict[str, str] = {}

pytestmark = [pytest.mark.slow, pytest.mark.exclusive, pytest.mark.timeout(900)]


def test_the_reference_behind_a_byte_relay_passes_every_connector_scenario(pytester: pytest.Pytester) -> None:
    manifest = relay_manifest(pytester.path, KNOWN_FAILURES)
    chosen = [s.id for s in catalogue.load().scenarios if not s.timing and s.section in SECTIONS]
    selectors = [arg for sid in chosen for arg in ("--scenario", sid)]
    left_out = [arg for module in LEFT_OUT for arg in ("--deselect", module)]
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-n", "3", "--rootdir", str(ROOT), "-c", str(ROOT / "pytest.ini"),
        "--sut", str(manifest), "--report-dir", str(pytester.path / "out"), "-m", "not perf and not soak",
        *selectors, *left_out, str(ROOT / "specs"),
        timeout=840,
    )  # fmt: skip
    report = json.loads((pytester.path / "out" / "conformance-report.json").read_text())
    ran = [row for row in report["scenarios"] if row["section"] in SECTIONS and row["status"] != "not-run"]
    bad = [
        f"{row['id']}: {row['status']} {row['reason']}"
        for row in ran
        if row["status"] not in ("passed", "skipped")
    ]
    assert ran and not bad, "behind a transparent relay the reference must still pass:\n" + "\n".join(bad)
    assert result.ret == 0, result.stdout.str()[-3000:]
