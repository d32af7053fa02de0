"""The per-document CPU floor on this machine: what no implementation can avoid for one document.

    python bench/floor.py [--connector-cpu-ms X]

floor = SHA-1 of a 300 KB PDF (the XDS hash) + one RSA-2048 PKCS#1 v1.5 SHA-256 signature
      + exclusive c14n of a CDA header (the CDA built by the connector, without its base64 body).
Given the connector's CPU milliseconds per document (bench/feed.py), prints the ratio to the floor.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from lxml import etree  # noqa: E402

from bench.common import patient_row, store_rows, synthetic_pdf, table  # noqa: E402
from connector.actions.demo import SITES  # noqa: E402
from connector.config import Site, Structure  # noqa: E402
from connector.payload.cda import build_cda  # noqa: E402
from connector.store import Document, Patient  # noqa: E402

HL7 = "urn:hl7-org:v3"


def cda_header() -> etree._Element:
    """A CDA the connector builds for a synthetic document, with its nonXMLBody component removed."""
    site = Site(SITES[0][0], SITES[0][1], SITES[0][2], "ETABLISSEMENT")
    structure = Structure("0B0999999", "1.2.250.1.999.42", "Centre Hospitalier de Test", (site,), "1.2.250.1.999.42.9")
    _, row = next(store_rows(1, 7, 1))
    document = Document(**{**row, "finess_geo": site.finess_geo})
    xml = build_cda(document, Patient(**patient_row(0)), site, structure, b"%PDF-1.4\n%%EOF\n", unique_id="1.2.250.1.999.42.1.1")
    root = etree.fromstring(xml)
    root.remove(root.find(f"{{{HL7}}}component"))
    return root


def per_call_ms(fn, min_total_s: float = 0.5) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(number, int(number * min_total_s / 0.2))
    return min(timer.repeat(repeat=5, number=number)) / number * 1000


def measure() -> dict[str, float]:
    pdf = synthetic_pdf(random.Random(1), 300 * 1024)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # in memory only
    digest_input = hashlib.sha256(b"SignedInfo").digest()
    header = cda_header()
    return {
        "SHA-1 of a 300 KB PDF": per_call_ms(lambda: hashlib.sha1(pdf).digest()),
        "RSA-2048 PKCS#1 v1.5 SHA-256 signature": per_call_ms(lambda: key.sign(digest_input, padding.PKCS1v15(), hashes.SHA256())),
        "exclusive c14n of a CDA header": per_call_ms(lambda: etree.tostring(header, method="c14n", exclusive=True)),
        # not in the floor, shown for scale: the CDA must carry the PDF in base64
        "(base64 of the 300 KB PDF, not in the floor)": per_call_ms(lambda: base64.b64encode(pdf)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connector-cpu-ms", type=float, help="the connector's CPU ms per document (bench/feed.py)")
    args = parser.parse_args(argv)
    costs = measure()
    floor = sum(v for k, v in costs.items() if not k.startswith("("))
    rows = [(k, f"{v:.3f} ms") for k, v in costs.items()] + [("floor per document", f"{floor:.3f} ms")]
    if args.connector_cpu_ms is not None:
        rows.append(("connector / floor", f"{args.connector_cpu_ms / floor:.1f}× (target ≤ 3×)"))
    print(table(rows))
    return {**costs, "floor": floor}


if __name__ == "__main__":
    main()
