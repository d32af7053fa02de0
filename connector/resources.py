"""Where the files shipped beside the code live (official schemas, value sets, schematrons)."""

from functools import cache
from pathlib import Path


@cache
def schemas_dir() -> Path:
    """The vendored `schemas/` folder of the checkout (installed with `pip install -e .`)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parent / "schemas"):
        if (candidate / "SOURCES.md").is_file():
            return candidate
    raise FileNotFoundError(
        "the official schemas folder (schemas/) was not found beside the connector package; "
        "install from a checkout with `pip install -e .`"
    )


def ans_kit() -> Path:
    """ANS TestContenuCDA kit: CDA XSD, schematrons, CI-SIS value sets."""
    return schemas_dir() / "ansforge-TestContenuCDA-3-0"
