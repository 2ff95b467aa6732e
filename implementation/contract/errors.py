"""Errors an exchange adapter raises; the server maps each to one gRPC status code."""

from __future__ import annotations


class ExchangeError(Exception):
    """Base of every exchange failure."""


class ExchangeUnavailable(ExchangeError):
    """The upstream exchange cannot be reached (mapped to UNAVAILABLE)."""


class InvalidRequest(ExchangeError):
    """The request is malformed (mapped to INVALID_ARGUMENT)."""


class InvalidData(ExchangeError):
    """The exchange sent data that fails validation; it is never forwarded."""
