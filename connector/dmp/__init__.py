"""Talking to the DMP: ITI-41 over mTLS with MTOM, ITI-18, response classification."""
