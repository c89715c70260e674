"""The README's settings table is generated from the ServingSettings object: keep them in step."""

from __future__ import annotations

import re
from pathlib import Path

from serving.settings import ServingSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_documented_in_readme() -> None:
    text = README.read_text()
    block = text.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    documented = set(re.findall(r"`(RECO_[A-Z0-9_]+)`", block))
    assert documented == {row[0] for row in ServingSettings.describe()}


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
