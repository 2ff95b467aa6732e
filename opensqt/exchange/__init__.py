"""The exchange contract: `v1` (generated code) and `testdata` (the spec's §8 data)."""
