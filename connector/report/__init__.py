"""The status report: aggregate queries over the ledger (`collect`) and its renderings
(text, json, csv, html, Prometheus textfile). Aggregates only: never a patient's data."""

from connector.report.figures import ELIGIBLE_STATES, collect

__all__ = ["ELIGIBLE_STATES", "collect"]
