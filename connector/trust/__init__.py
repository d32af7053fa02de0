"""Trust: certificates (PKCS#12), the signed VIHF token, the submission-set signature, the test PKI."""
