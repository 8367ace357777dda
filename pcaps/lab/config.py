"""Daemon configurations are kept as small templates in templates/; this fills them in."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template

TEMPLATES = Path(str(files(__package__) / "templates"))  # package data


def render(template: str, dest: Path, **values: object) -> Path:
    """Write ``templates/<template>`` with ``$name`` placeholders substituted (missing ones are an error)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(Template((TEMPLATES / template).read_text()).substitute(values))
    return dest
