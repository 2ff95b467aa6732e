"""Print the runtime requirements of pyproject.toml, one per line.

The image installs these (pinned by requirements.lock) in a layer of their own, before the code is
copied, so a code change does not reinstall the dependencies.
Usage: python docker/runtime_requirements.py [pyproject.toml]
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


def runtime_requirements(pyproject: Path) -> list[str]:
    with pyproject.open("rb") as stream:
        project = tomllib.load(stream)["project"]
    return [str(requirement) for requirement in project["dependencies"]]


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    print("\n".join(runtime_requirements(path)))
