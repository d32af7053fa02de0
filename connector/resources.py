"""Where the files shipped beside the code live (official schemas, value sets, schematrons)."""

from functools import cache
from pathlib import Path


@cache
def schemas_dir() -> Path:
    """The vendored official schemas: `schemas/` of the checkout, linked as `connector/schemas` so that a
    wheel carries them inside the package."""
    path = Path(__file__).parent / "schemas"
    if not (path / "SOURCES.md").is_file():
        raise FileNotFoundError(f"the official schemas are missing ({path}): reinstall dmp-connector")
    return path


def ans_kit() -> Path:
    """ANS TestContenuCDA kit: CDA XSD, schematrons, CI-SIS value sets."""
    return schemas_dir() / "ansforge-TestContenuCDA-3-0"
