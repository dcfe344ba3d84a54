"""Complete a folder of wheels for another interpreter: add what its environment markers need.

pip evaluates environment markers against the interpreter it runs on, so the wheels the host's
Python downloads can miss dependencies of the image's Python even at the same minor version:
redis needs async-timeout on Python < 3.11.3, which Debian 12's 3.11.2 is. This reads every
wheel's Requires-Dist, evaluates the markers for the target version, and fetches (pip wheel,
--no-deps) whatever is required but missing, until nothing is.

    python infra/wheels_for.py WHEEL_DIR TARGET_PYTHON_VERSION      # e.g. infra/wheels 3.11.2
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import BytesParser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

MAX_ROUNDS = 10


def requirements_of(wheel: Path) -> list[Requirement]:
    """The Requires-Dist entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = BytesParser().parsebytes(archive.read(name), headersonly=True)
    return [Requirement(line) for line in headers.get_all("Requires-Dist") or []]


def missing(folder: Path, environment: dict[str, str]) -> list[str]:
    """Requirements (without markers) the target needs and no wheel in the folder provides."""
    present = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in folder.glob("*.whl")}
    needed: dict[str, str] = {}
    for wheel in sorted(folder.glob("*.whl")):
        for requirement in requirements_of(wheel):
            marker = requirement.marker
            if marker is not None and not marker.evaluate({**environment, "extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name not in present:
                needed[name] = f"{requirement.name}{requirement.specifier}"
    return sorted(needed.values())


def main() -> int:
    """Fetch missing wheels round by round; print what was added."""
    folder, version = Path(sys.argv[1]), sys.argv[2]
    minor = ".".join(version.split(".")[:2])
    host_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    if minor != host_minor:
        print(
            f"wheels_for: the target runs Python {version} but these wheels are for {host_minor}; "
            "build that image from the package index instead (empty infra/wheels/)",
            file=sys.stderr,
        )
        return 1
    environment = {key: str(value) for key, value in default_environment().items()}
    environment.update(
        python_version=minor, python_full_version=version, implementation_version=version
    )
    for _ in range(MAX_ROUNDS):
        wanted = missing(folder, environment)
        if not wanted:
            return 0
        print(f"wheels_for: Python {version} also needs: {' '.join(wanted)}")
        subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
             str(folder), *wanted],
            check=True,
        )  # fmt: skip
    print("wheels_for: requirements did not settle", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
