"""The generated protobuf/gRPC code is what the committed .proto produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_generated_code_is_fresh() -> None:
    check = [sys.executable, "tools/gen_proto.py", "--check"]
    done = subprocess.run(check, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"the contract package opensqt/exchange/v1 is stale:\n{done.stderr}"


def test_contract_is_the_spec_data_model() -> None:
    from opensqt.exchange.v1 import exchange_pb2 as pb

    # the spec's §8 data model, field for field and in its order
    assert " ".join(f.name for f in pb.Account.DESCRIPTOR.fields) == (
        "total_balance available_balance equity unrealized_pnl margin_used margin_level leverage updated_at"
    )
    assert " ".join(f.name for f in pb.Position.DESCRIPTOR.fields) == (
        "symbol side size entry_price mark_price leverage unrealized_pnl liquidation margin_type"
    )
    service = pb.DESCRIPTOR.services_by_name["ExchangeService"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "GetAccount": (False, False),
        "GetPositions": (False, False),
        "SubscribeAccount": (False, True),
        "SubscribePositions": (False, True),
    }


def test_every_proto_field_is_documented() -> None:
    text = (ROOT / "proto/opensqt/exchange/v1/exchange.proto").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(text):
        stripped = line.strip()
        is_field = (
            stripped.endswith(";")
            and "=" in stripped
            and not stripped.startswith(("//", "syntax", "package", "import", "option"))
        )
        if is_field and not text[number - 1].strip().startswith("//"):
            undocumented.append(f"line {number + 1}: {stripped}")
    assert not undocumented, "fields without a comment:\n" + "\n".join(undocumented)
