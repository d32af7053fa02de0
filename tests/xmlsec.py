"""Run Debian's `xmlsec1 --verify` as an independent verifier of our XML signatures."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

SAML_ASSERTION = "urn:oasis:names:tc:SAML:2.0:assertion:Assertion"


def xmlsec_verify(xml: bytes, trusted_pem: Path, *options: str) -> subprocess.CompletedProcess:
    """`xmlsec1 --verify --trusted-pem <ca> [options] <file>`; returncode 0 means the signature verifies."""
    binary = shutil.which("xmlsec1")
    if binary is None:  # CI must install it (Debian package xmlsec1): fail, never skip
        raise RuntimeError("xmlsec1 is not installed (apt-get install xmlsec1)")
    with tempfile.NamedTemporaryFile(suffix=".xml") as fh:
        fh.write(xml)
        fh.flush()
        return subprocess.run(
            [binary, "--verify", "--trusted-pem", str(trusted_pem), *options, fh.name],
            capture_output=True, text=True, timeout=60,
        )


def vihf_options() -> tuple[str, ...]:
    """SAML uses `ID`, which xmlsec1 does not know as an ID attribute."""
    return ("--id-attr:ID", SAML_ASSERTION)


def manifest_options() -> tuple[str, ...]:
    """The IHE manifest's urn:oid: references cannot be dereferenced by xmlsec1: it checks SignedInfo only."""
    return ("--ignore-manifests",)
