"""The system under test: its manifest, the program launcher, readiness checks and program logs."""
