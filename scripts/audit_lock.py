"""`make audit`: known vulnerabilities in every version pinned by requirements.lock.

pip-audit does the audit (PyPI's advisory data, `--no-deps --disable-pip`: the lock already pins
every transitive version). Some package indexes serve only the project-level JSON API, not the
per-version one pip-audit asks; pip-audit then skips the package. For a skipped package this
script reads the project-level JSON, whose `vulnerabilities` are those of the newest release:
when the pin is the newest release that is the pin's audit. A pin that is not the newest cannot
be audited that way and is listed as such (not a failure; README "Supply chain").

Exit status: 1 when any pinned version has a known vulnerability not accepted below, else 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from packaging.utils import canonicalize_name

# Advisory id -> why it is accepted (also in README "Supply chain"). Empty: nothing is accepted.
ACCEPTED: dict[str, str] = {}

PROJECT_JSON = "https://pypi.org/pypi/{name}/json"


def main(lock: Path) -> int:
    report = run_pip_audit(lock)
    findings: list[str] = []
    unaudited: list[str] = []
    audited = 0
    for dependency in report["dependencies"]:
        name, version = dependency["name"], dependency.get("version")
        if "skip_reason" not in dependency:
            audited += 1
            findings += [
                f"{name}=={version}: {v['id']} (fixed in {v.get('fix_versions')})"
                for v in dependency["vulns"]
            ]
            continue
        pinned = version or _pinned(lock, name)
        latest, vulns = project_advisories(name)
        if latest != pinned:
            unaudited.append(f"{name}=={pinned} (newest {latest})")
            continue
        audited += 1
        findings += [f"{name}=={pinned}: {v['id']} (fixed in {v.get('fixed_in')})" for v in vulns]
    open_findings = [f for f in findings if not any(f": {id_} " in f for id_ in ACCEPTED)]
    print(f"pip-audit over {lock}: {audited} pins audited, {len(findings)} known vulnerabilities")
    for finding in findings:
        print(f"  {'accepted' if finding not in open_findings else 'FOUND'}: {finding}")
    if unaudited:
        print(f"  not auditable from this index (pin is not the newest release): {len(unaudited)}")
        for line in unaudited:
            print(f"    {line}")
    return 1 if open_findings else 0


def run_pip_audit(lock: Path) -> dict[str, Any]:
    command = [
        str(Path(sys.executable).with_name("pip-audit")),
        "--requirement", str(lock),
        "--no-deps", "--disable-pip", "--format", "json", "--progress-spinner", "off",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode not in (0, 1):  # 1: vulnerabilities found, still a report
        sys.exit(f"pip-audit failed ({result.returncode}):\n{result.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def project_advisories(name: str) -> tuple[str, list[dict[str, Any]]]:
    response = requests.get(PROJECT_JSON.format(name=name), timeout=30)
    response.raise_for_status()
    data = response.json()
    vulns = [v for v in data.get("vulnerabilities") or [] if not v.get("withdrawn")]
    return str(data["info"]["version"]), vulns


def _pinned(lock: Path, name: str) -> str:
    wanted = canonicalize_name(name)
    for line in lock.read_text().splitlines():
        package, _, version = line.partition("==")
        if canonicalize_name(package.strip()) == wanted:
            return version.strip()
    return "?"


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")))
