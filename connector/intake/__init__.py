"""Intakes: documents taken the way a DPI sends them (HL7 v2 over MLLP) and written to the store contract
(connector/store.py), from which the run decides what to send."""
