"""Payloads: CDA R2 documents, XDS.b metadata, deterministic ids, validation against the official schemas."""
