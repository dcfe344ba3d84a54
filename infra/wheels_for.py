"""Download the wheels another interpreter needs from a hashed lock file, checking every hash.

requirements.lock is resolved once for every platform and Python >= 3.11, with environment
markers where they differ: redis needs async-timeout below Python 3.11.3, which Debian 12's
3.11.2 (the image's) is, while the host's Python may be newer. pip evaluates markers for the
interpreter it runs on, so the host's pip would fetch the host's set. This evaluates each
entry's marker for the target version instead (platform and machine are the host's: the image
is Linux on the same machine), then downloads exactly those pins, binary wheels only, with
`pip download --require-hashes --no-deps`: a file whose sha256 is not in the lock fails here,
and the image installs the same lock with --require-hashes from this folder.

    python infra/wheels_for.py REQUIREMENTS WHEEL_DIR TARGET_PYTHON_VERSION   # e.g. ... 3.11.2
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

HASH = re.compile(r"\s--hash=(\S+)")


def entries(text: str) -> list[tuple[Requirement, list[str]]]:
    """Each requirement of a pip requirements file with its hashes (continuations joined)."""
    found = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = " " + raw.strip()
        if line.isspace() or line.startswith(" #"):
            continue
        found.append((Requirement(HASH.sub("", line).strip()), HASH.findall(line)))
    return found


def for_target(text: str, version: str) -> list[str]:
    """Pinned `name==version --hash=...` lines whose markers hold on the target Python."""
    minor = ".".join(version.split(".")[:2])
    environment = {key: str(value) for key, value in default_environment().items()}
    environment.update(
        python_version=minor, python_full_version=version, implementation_version=version
    )
    lines = []
    for requirement, hashes in entries(text):
        marker = requirement.marker
        if marker is not None and not marker.evaluate({**environment, "extra": ""}):
            continue
        pins = [s for s in requirement.specifier if s.operator == "=="]
        if len(pins) != 1 or not hashes:
            raise SystemExit(f"wheels_for: {requirement} is not pinned with hashes; run make lock")
        lines.append(
            f"{requirement.name}=={pins[0].version} " + " ".join(f"--hash={h}" for h in hashes)
        )
    return lines


def main() -> int:
    """Write the target's pins next to the wheels and download them; print what was skipped."""
    requirements, folder, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    minor = ".".join(version.split(".")[:2])
    host_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    if minor != host_minor:
        print(
            f"wheels_for: the target runs Python {version} but these wheels are for {host_minor}; "
            "build that image from the package index instead (empty infra/wheels/)",
            file=sys.stderr,
        )
        return 1
    text = requirements.read_text(encoding="utf-8")
    lines = for_target(text, version)
    print(f"wheels_for: Python {version} needs {len(lines)} of the {len(entries(text))} pins")
    folder.mkdir(parents=True, exist_ok=True)
    pinned = folder / f"requirements-py{version}.txt"
    pinned.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Wheels only: a wheel built here from an sdist would carry a hash the lock does not list.
    subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "--require-hashes", "--dest", str(folder),
         "-r", str(pinned)],
        check=True,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
