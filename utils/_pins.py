"""The course's version pins, read from ``requirements.txt`` and ``environment.yml`` (for the environment tests of
both editions and for chapter 0)."""

from __future__ import annotations

import re
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]  # the folder utils/ was installed from (editable install)


def requirement_pins(root: Path = CHECKOUT) -> dict[str, str]:
    """Lower-cased package name -> pinned version, from ``root/requirements.txt``; every line must pin with ``==``."""
    pins = {}
    for line in (Path(root) / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                raise ValueError(f"requirements.txt: {line!r} is not pinned with ==")
            pins[name.lower()] = version
    return pins


def environment_yml_pins(root: Path = CHECKOUT) -> dict[str, str]:
    """The same mapping for the ``pip:`` block of ``root/environment.yml`` (the conda route)."""
    block = (Path(root) / "environment.yml").read_text().split("- pip:", 1)[1]
    pattern = r"^\s*-\s*([A-Za-z0-9_.\-\[\]]+)==(\S+)\s*$"
    return {m.group(1).lower(): m.group(2) for m in re.finditer(pattern, block, re.M)}
