"""Loads the conformance harness (a pytest plugin) for every test of this repository."""

pytest_plugins = ["harness.plugin", "harness.fixtures"]
