"""The per-document CPU floor on this machine: what no implementation can avoid for one document.

    python bench/floor.py [--connector-cpu-ms X]

floor = SHA-1 of a 300 KB PDF (the XDS hash) + one RSA-2048 PKCS#1 v1.5 SHA-256 signature
      + exclusive c14n of a CDA header (the CDA built by the connector, without its base64 body).
Given the connector's CPU milliseconds per document (bench/feed.py), prints the ratio to the floor.

It also prints the work the floor leaves out although every conforming document needs it, each measured
on its own: the PDF's base64 in the CDA, the SHA-1 (XDS hash) and SHA-256 (XAdES reference) of the whole
CDA rather than of the PDF, parsing the CDA and checking it against the ANS CDA XSD, the TLS encryption of
the body, and, for scale, the ANS schematron. Their sum is a second, stricter floor.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from lxml import etree  # noqa: E402

from bench.common import patient_row, store_rows, synthetic_pdf, table  # noqa: E402
from connector.actions.demo import SITES  # noqa: E402
from connector.config import Site, Structure, ValidationSettings  # noqa: E402
from connector.payload import validate  # noqa: E402
from connector.payload.cda import build_cda  # noqa: E402
from connector.store import Document, Patient  # noqa: E402

HL7 = "urn:hl7-org:v3"
ENGINE = ValidationSettings().engine  # the schematron engine a run uses by default


def synthetic_cda(pdf: bytes) -> bytes:
    """The CDA the connector builds for a synthetic document carrying `pdf`."""
    site = Site(SITES[0][0], SITES[0][1], SITES[0][2], "ETABLISSEMENT")
    structure = Structure("0B0999999", "1.2.250.1.999.42", "Centre Hospitalier de Test", (site,), "1.2.250.1.999.42.9")
    _, row = next(store_rows(1, 7, 1))
    document = Document(**{**row, "finess_geo": site.finess_geo})
    return build_cda(document, Patient(**patient_row(0)), site, structure, pdf, unique_id="1.2.250.1.999.42.1.1")


def cda_header() -> etree._Element:
    """A CDA the connector builds for a synthetic document, with its nonXMLBody component removed."""
    root = etree.fromstring(synthetic_cda(b"%PDF-1.4\n%%EOF\n"))
    root.remove(root.find(f"{{{HL7}}}component"))
    return root


def per_call_ms(fn, min_total_s: float = 0.5, repeat: int = 5) -> float:
    """The best of `repeat` timings of `fn`, each looping for at least `min_total_s`."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(number, int(number * min_total_s / 0.2))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1000


def measure(per_call_ms=per_call_ms) -> dict[str, float]:
    pdf = synthetic_pdf(random.Random(1), 300 * 1024)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # in memory only
    digest_input = hashlib.sha256(b"SignedInfo").digest()
    header = cda_header()
    return {
        "SHA-1 of a 300 KB PDF": per_call_ms(lambda: hashlib.sha1(pdf).digest()),
        "RSA-2048 PKCS#1 v1.5 SHA-256 signature": per_call_ms(lambda: key.sign(digest_input, padding.PKCS1v15(), hashes.SHA256())),
        "exclusive c14n of a CDA header": per_call_ms(lambda: etree.tostring(header, method="c14n", exclusive=True)),
    }


def measure_beyond(pdf: bytes, per_call_ms=per_call_ms) -> dict[str, float]:
    """What every conforming document also costs, left out of the floor above."""
    cda = synthetic_cda(pdf)
    aes, nonce = AESGCM(AESGCM.generate_key(bit_length=256)), b"\0" * 12
    assert not validate.cda_errors(cda, schematron=False)  # compiles the XSD before timing
    assert not validate.cda_errors(cda, engine=ENGINE)  # and the schematron
    return {
        "base64 of the PDF into the CDA": per_call_ms(lambda: base64.b64encode(pdf)),
        "SHA-1 + SHA-256 of the CDA, not only of the PDF": per_call_ms(lambda: (hashlib.sha1(cda).digest(), hashlib.sha256(cda).digest()))
        - per_call_ms(lambda: hashlib.sha1(pdf).digest()),
        "parse the CDA + ANS CDA XSD": per_call_ms(lambda: validate.cda_errors(cda, schematron=False)),
        "TLS record encryption of the CDA (AES-256-GCM)": per_call_ms(lambda: aes.encrypt(nonce, cda, None)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connector-cpu-ms", type=float, help="the connector's CPU ms per document (bench/feed.py)")
    parser.add_argument("--quick", action="store_true", help="one short timing each (tests; not for figures)")
    args = parser.parse_args(argv)
    timed = functools.partial(per_call_ms, min_total_s=0.05, repeat=1) if args.quick else per_call_ms
    costs = measure(timed)
    floor = sum(costs.values())
    beyond = measure_beyond(synthetic_pdf(random.Random(1), 300 * 1024), timed)
    strict = floor + sum(beyond.values())
    small = synthetic_cda(b"%PDF-1.4\n%%EOF\n")
    schematron = timed(lambda: validate.cda_errors(small, engine=ENGINE)) - timed(lambda: validate.cda_errors(small, schematron=False))
    rows = [(k, f"{v:.3f} ms") for k, v in costs.items()] + [("floor per document", f"{floor:.3f} ms")]
    rows += [(f"+ {k}", f"{v:.3f} ms") for k, v in beyond.items()]
    rows += [("floor with what conformance adds", f"{strict:.3f} ms"),
             (f"(ANS schematron of one CDA, {ENGINE} engine, for scale)", f"{schematron:.3f} ms")]
    if args.connector_cpu_ms is not None:
        rows.append(("connector / floor", f"{args.connector_cpu_ms / floor:.1f}× (target ≤ 3×)"))
        rows.append(("connector / floor with conformance", f"{args.connector_cpu_ms / strict:.1f}×"))
    print(table(rows))
    return {**costs, "floor": floor, **beyond, "floor with conformance": strict, "schematron": schematron}


if __name__ == "__main__":
    main()
