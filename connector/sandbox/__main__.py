"""`python -m connector.sandbox serve|report|pki …` (the CLI wires the same functions as `dmp-connector sandbox`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from connector.sandbox import report, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connector.sandbox", description="local sandbox DMP")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the sandbox DMP over mutual TLS until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--pki-dir", type=Path, required=True, help="test PKI folder (created if empty)")
    serve.add_argument("--state", type=Path, required=True, dest="state_path", help="SQLite state file")
    serve.add_argument("--latency-ms", type=int, default=0)
    serve.add_argument("--fail-rate", type=float, default=0.0)
    serve.add_argument("--drop-after-commit-rate", type=float, default=0.0)
    serve.add_argument("--fast", action="store_true", help="skip the CDA schematron")
    serve.add_argument("--seed", type=int)
    serve.add_argument("--no-auto-create-patients", dest="auto_create_patients", action="store_false")
    serve.add_argument("--keep-content", action="store_true", help="store the documents' bytes too")

    rep = commands.add_parser("report", help="what the sandbox received")
    rep.add_argument("--state", type=Path, required=True, dest="state_path")
    rep.add_argument("--json", action="store_true")

    pki = commands.add_parser("pki", help="create a test PKI (CA, server, ORG AUTH_CLI and ORG SIGN)")
    pki.add_argument("directory", type=Path)

    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command == "serve":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        server.main(**args)
    elif command == "report":
        result = report.report(args["state_path"])
        print(json.dumps(result, indent=2, ensure_ascii=False) if args["json"] else report.render_text(result), end="")
    else:
        from connector.trust.pki import create_test_pki

        files = create_test_pki(args["directory"])
        print(f"test PKI in {files.directory}: CA {files.ca_cert.name}, AUTH_CLI {files.auth_cli_p12.name}, "
              f"SIGN {files.sign_p12.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
