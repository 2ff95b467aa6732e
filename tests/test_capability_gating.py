"""Capabilities gate every form of every test: against a SUT that claims nothing (and has no
[compose] table), every scenario that needs a capability is reported not applicable, nothing
fails, and the launcher refuses to hand a program TLS or a token the SUT does not claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.sut.launch import CapabilityNotClaimed, ProgramLauncher
from harness.sut.manifest import DEFAULT_MANIFEST, load_manifest

ROOT = Path(__file__).resolve().parent.parent
# the spec modules whose tests need capabilities (metrics, tls, token_auth, compose, websocket, ...)
GATED_MODULES = [
    "specs/integration/test_server_account.py",
    "specs/integration/test_server_positions.py",
    "specs/integration/test_connector_contract.py",
    "specs/integration/test_connector_reflection.py",
    "specs/unit/test_compose_file.py",
    "specs/e2e/test_docker_compose.py",
    "specs/e2e/test_dashboard_browser.py",
]

pytestmark = pytest.mark.timeout(120)


def claims_nothing(folder: Path) -> Path:
    """The reference's programs, with no capability claimed and no [compose] table."""
    text = DEFAULT_MANIFEST.read_text(encoding="utf-8")
    body = text.split("[programs.exchange_connector]", 1)[1].split("\n[programs.client_driver]", 1)[0]
    body = body.split("\n# §5.2", 1)[0]
    path = folder / "nothing.toml"
    path.write_text(
        'name = "claims-nothing"\ncapabilities = []\n[programs.exchange_connector]' + body, encoding="utf-8"
    )
    return path


def test_a_sut_claiming_nothing_gets_not_applicable_and_no_failure(pytester: pytest.Pytester) -> None:
    manifest = claims_nothing(pytester.path)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "--rootdir", str(ROOT), "-c", str(ROOT / "pytest.ini"),
        "--sut", str(manifest), "--report-dir", str(pytester.path / "out"),
        *(str(ROOT / module) for module in GATED_MODULES),
    )  # fmt: skip
    report = json.loads((pytester.path / "out" / "conformance-report.json").read_text())
    outcomes = [test["outcome"] for test in report["tests"]]
    assert outcomes and set(outcomes) == {"not-applicable"}, (
        f"expected every gated test not applicable, got {sorted(set(outcomes))}:\n"
        + "\n".join(
            f"{t['nodeid']}: {t['outcome']} {t['reason']}"
            for t in report["tests"]
            if t["outcome"] != "not-applicable"
        )
    )
    status = {row["id"]: row for row in report["scenarios"]}
    for sid in ("5.2.1.a", "5.2.1.b", "5.2.1.c", "5.2.1.d", "5.2.1.x1"):
        assert status[sid]["status"] == "not-applicable", f"{sid}: expected not applicable, got {status[sid]}"
        assert "compose" in status[sid]["reason"], status[sid]["reason"]
    assert result.ret == 0, result.stdout.str()[-2000:]


def test_the_launcher_refuses_an_unclaimed_capability(tmp_path: Path) -> None:
    manifest = load_manifest(claims_nothing(tmp_path))
    launcher = ProgramLauncher(manifest, tmp_path / "programs")
    try:
        for tls, token in ((True, False), (False, True)):
            with pytest.raises(CapabilityNotClaimed, match=r"must carry @pytest\.mark\.requires"):
                launcher.start(
                    "exchange_connector", {"grpc_port": 1, "upstream": "127.0.0.1:1"}, tls=tls, token=token
                )
        assert launcher.programs == [], (
            "no program may start for a test that asked for an unclaimed capability"
        )
    finally:
        launcher.stop_all()
