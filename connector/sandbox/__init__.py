"""A local DMP for demos and tests: mTLS, MTOM, ITI-41 + ITI-18, strict checks, fault injection."""
