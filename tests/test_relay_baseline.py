"""The bare relay baseline (harness/doubles/relay.py): every upstream message reaches each of its
subscribers unchanged and in order; unary calls pass through to the upstream."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from harness.doubles.mock_exchange import MockExchangeServer
from harness.doubles.relay import RelayProcess
from harness.tagged_updates import account_tag, tagged_account
from opensqt.exchange.v1 import exchange_pb2 as pb
from opensqt.exchange.v1 import exchange_pb2_grpc as pb_grpc

RUN, PRIMING, UPDATES, SUBSCRIBERS = 7, 8, 20, 3


async def _read(address: str, got: list[int], ready: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.ExchangeServiceStub(channel).SubscribeAccount(pb.SubscribeAccountRequest())
        async for account in call:
            tag = account_tag(account)
            if tag is not None and tag[0] == PRIMING:
                ready.set()
            elif tag is not None and tag[0] == RUN:
                got.append(tag[1])
                if tag[1] == UPDATES:
                    return


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_the_relay_writes_every_upstream_update_on_to_each_subscriber() -> None:
    with MockExchangeServer() as mock, RelayProcess(mock.address) as relay:
        received: list[list[int]] = [[] for _ in range(SUBSCRIBERS)]
        ready = [asyncio.Event() for _ in range(SUBSCRIBERS)]
        readers = [
            asyncio.create_task(_read(relay.address, got, r)) for got, r in zip(received, ready, strict=True)
        ]
        try:
            for seq in range(1, 200):  # until every subscriber is registered: it got a priming update
                if all(r.is_set() for r in ready):
                    break
                mock.trigger_account_update(tagged_account(PRIMING, seq))
                await asyncio.sleep(0.05)
            for seq in range(1, UPDATES + 1):
                mock.trigger_account_update(tagged_account(RUN, seq))
            await asyncio.wait_for(asyncio.gather(*readers), 15)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        assert received == [list(range(1, UPDATES + 1))] * SUBSCRIBERS
        async with grpc.aio.insecure_channel(relay.address) as channel:
            account = await pb_grpc.ExchangeServiceStub(channel).GetAccount(pb.GetAccountRequest(), timeout=5)
        assert mock.calls["GetAccount"] >= 1 and account.total_balance
