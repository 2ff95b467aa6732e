"""Test doubles: the mock exchange (its server and its handlers) and the bare baselines."""
