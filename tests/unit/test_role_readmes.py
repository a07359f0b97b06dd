"""The Citus roles' READMEs list exactly the options of their meta/argument_specs.yml.

Each README holds, between two markers, the tables rendered here from argument_specs; when
an option changes, the failure prints the tables to paste.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BEGIN = "<!-- options: generated from meta/argument_specs.yml (tests/unit/test_role_readmes.py) -->"
END = "<!-- end of options -->"
ROLES = ["citus_node", "citus_cluster", "patroni", "etcd"]


def _cell(text: str) -> str:
    text = re.sub(r"C\(([^)]*)\)", r"`\1`", text)
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _default(spec: dict[str, Any]) -> str:
    if spec.get("required"):
        return "required"
    if "default" not in spec:
        return "(see description)"
    value = spec["default"]
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return (
        "`"
        + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        + "`"
    )


def render(role: str) -> str:
    specs = yaml.safe_load((REPO_ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    parts = []
    for entry_point, entry in specs["argument_specs"].items():
        rows = ["| option | type | default | description |", "|---|---|---|---|"]
        for name, spec in entry["options"].items():
            kind = spec.get("type", "str")
            if kind == "list" and "elements" in spec:
                kind = f"list of {spec['elements']}"
            description = spec.get("description", "")
            if isinstance(description, list):
                description = " ".join(description)
            if "choices" in spec:
                description += " One of " + ", ".join(f"`{c}`" for c in spec["choices"]) + "."
            rows.append(f"| `{name}` | {kind} | {_default(spec)} | {_cell(description)} |")
        heading = f"### `{entry_point}`: {_cell(entry['short_description'])}"
        parts.append(heading + "\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


@pytest.mark.parametrize("role", ROLES)
def test_readme_options_match_argument_specs(role: str) -> None:
    readme = (REPO_ROOT / "roles" / role / "README.md").read_text()
    assert BEGIN in readme and END in readme, f"roles/{role}/README.md lacks the option markers"
    written = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    expected = render(role)
    assert written == expected, f"roles/{role}/README.md: paste between the markers:\n{expected}"
