"""The README's Testing example runs as written."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.anyio


def readme_block(heading: str) -> str:
    """The first Python code block under a README heading."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {heading}"
    return match.group(1)


async def test_testing_section_example_runs() -> None:
    """The respx stub example (a 200, then a 429 with RateLimit-Reset) passes."""
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("Testing"), "README.md", "exec"), namespace)
    await namespace["test_my_code"]()
