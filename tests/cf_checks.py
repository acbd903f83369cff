"""The two CF checkers, run offline on a NetCDF file: the IOOS compliance checker (``cf:1.8``)
and the CF checker (``cfchecks``, cfchecker on PyPI).

Both need CF's standard-name table; the compliance checker ships one (version 93), and the CF
checker is given that same file instead of downloading it. The CF checker also reads an
area-type table and a standardized-region list, which it would download too: demsr's products
use neither area types nor region names, so it gets empty tables (written next to the file
checked). Its units checks call the UDUNITS-2 C library through ``cfunits``; where the system
has none (``libudunits2``), the copy bundled in the ``cf-units`` wheel (a compliance-checker
dependency) is used, with that wheel's unit database.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

_EMPTY_TABLES = {
    "area_types.xml": "<area_type_table><version_number>0</version_number>"
    "<date>none</date></area_type_table>",
    "region_names.xml": "<standardized_region_list><version_number>0</version_number>"
    "<date>none</date></standardized_region_list>",
}


@dataclass(frozen=True)
class CheckerReport:
    """What one checker said: counts per severity and the messages of errors and warnings."""

    checker: str
    errors: int
    warnings: int
    infos: int
    messages: tuple[str, ...]


def standard_name_table() -> Path:
    import compliance_checker

    return Path(compliance_checker.__file__).parent / "data" / "cf-standard-name-table.xml"


def _use_bundled_udunits() -> None:
    """Point cfunits at cf-units' own UDUNITS-2 when the system has no libudunits2."""
    if ctypes.util.find_library("udunits2") is not None:
        return
    import cf_units

    package = Path(cf_units.__file__).parent
    libraries = sorted((package.parent / "cf_units.libs").glob("libudunits2*.so*"))
    if not libraries:
        raise RuntimeError("no UDUNITS-2 library: install libudunits2 or cf-units")
    os.environ.setdefault("UDUNITS2_XML_PATH", str(package / "etc" / "share" / "udunits2.xml"))
    find_library = ctypes.util.find_library

    def find(name: str) -> str | None:
        return str(libraries[0]) if name == "udunits2" else find_library(name)

    ctypes.util.find_library = find  # read once, when cfunits is first imported


def run_cfchecks(path: Path, version: str = "1.8") -> CheckerReport:
    """The CF checker on ``path`` (a ``.nc`` file), offline."""
    _use_bundled_udunits()
    from cfchecker import cfchecks

    tables = {}
    for name, text in _EMPTY_TABLES.items():
        tables[name] = path.parent / f".{path.stem}.{name}"
        tables[name].write_text(f'<?xml version="1.0"?>{text}')
    checker = cfchecks.CFChecker(
        cfStandardNamesXML=str(standard_name_table()),
        cfAreaTypesXML=str(tables["area_types.xml"]),
        cfRegionNamesXML=str(tables["region_names.xml"]),
        version=cfchecks.CFVersion(version),
        silent=True,
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            checker.checker(str(path))
    finally:
        for table in tables.values():
            table.unlink()
    counts = checker.get_total_counts()
    messages = []
    for scope in checker.all_results[str(path)].values():
        groups = scope.values() if "FATAL" not in scope else [scope]
        for group in groups:
            for severity in ("FATAL", "ERROR", "WARN"):
                messages += [f"{severity}: {m}" for m in group.get(severity, [])]
    return CheckerReport(
        "cfchecks",
        counts["FATAL"] + counts["ERROR"],
        counts["WARN"],
        counts["INFO"],
        tuple(messages),
    )


def run_compliance_checker(path: Path, test: str = "cf:1.8") -> CheckerReport:
    """The IOOS compliance checker's ``test`` on ``path``: its errors are the high-priority
    findings, its warnings the medium-priority ones, infos the low-priority suggestions."""
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = path.parent / f".{path.stem}.compliance.json"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ComplianceChecker.run_checker(
                str(path), [test], 0, "normal", output_filename=str(report), output_format="json"
            )
        result = json.loads(report.read_text())[test]
    finally:
        report.unlink(missing_ok=True)

    def messages(priority: str) -> list[str]:
        return [
            f"{item['name']}: {'; '.join(item['msgs'])}"
            for item in result.get(f"{priority}_priorities", [])
            if item.get("msgs")
        ]

    high, medium, low = messages("high"), messages("medium"), messages("low")
    return CheckerReport(
        "compliance-checker " + test, len(high), len(medium), len(low), tuple(high + medium)
    )
