"""Deliberately faulty connectors: the reference exchange_connector with one fault patched in, and
the catalogue of the scenarios that must catch each fault (faults.yaml). They prove the suite fails
an implementation that is wrong, and says why."""
