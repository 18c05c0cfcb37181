"""``stepline import-oracle``'s work apart from the shell: read, convert, write, report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from stepline.core.loader import parse_definition
from stepline.errors import DefinitionError
from stepline.oracle.catalog import Catalog
from stepline.oracle.convert import JobConversion, convert_catalog

__all__ = ["ImportResult", "TargetExists", "import_jobs", "render"]


@dataclass
class ImportResult:
    conversions: list[JobConversion]
    written: list[Path]

    @property
    def ok(self) -> bool:
        return all(c.document is not None and not c.disagreements for c in self.conversions)


class TargetExists(ValueError):
    """A batch file to write exists already and --force was not given."""


def import_jobs(
    catalog: Catalog,
    out_dir: Path,
    *,
    connection: str = "oracle",
    qualify: bool = False,
    jobs: Sequence[str] = (),
    force: bool = False,
    now: datetime | None = None,
) -> ImportResult:
    """Convert ``catalog``'s jobs and write one ``<batch>.yaml`` per converted job.

    Every written document is validated as ``stepline validate`` would. Raises TargetExists
    before writing anything if a file exists and ``force`` is false; a job named in ``jobs``
    that the catalog does not hold raises ValueError.
    """
    conversions = convert_catalog(
        catalog, connection=connection, qualify=qualify, now=now, jobs=list(jobs) or None
    )
    missing = {j.upper() for j in jobs} - {c.job for c in conversions}
    if missing:
        raise ValueError(f"job(s) {', '.join(sorted(missing))} not found for owner {catalog.owner}")
    targets = [(c, out_dir / f"{c.batch}.yaml") for c in conversions if c.document is not None]
    existing = [str(path) for _, path in targets if path.exists()]
    if existing and not force:
        raise TargetExists(
            f"{', '.join(existing)} exist(s); pass --force to overwrite, or choose --out"
        )
    for conversion, path in targets:
        assert conversion.document is not None
        try:
            parse_definition(conversion.document, str(path))
        except DefinitionError as exc:  # a converter bug, not the user's: say so plainly
            conversion.refused.append(f"the converted batch is invalid: {exc}")
            conversion.document = None
    written: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for conversion, path in targets:
        if conversion.document is not None:
            path.write_text(conversion.yaml(), encoding="utf-8")
            written.append(path)
    return ImportResult(conversions, written)


def render(result: ImportResult) -> str:
    """The report: per job, the outcome, what mapped, what was dropped, the fire times side
    by side (our cron and dateutil.rrule), and the DISABLE statement."""
    lines: list[str] = []
    for c in result.conversions:
        lines.append(f"== {c.owner}.{c.job}")
        if c.document is None:
            lines.append("   NOT CONVERTED")
            lines += [f"   refused: {reason}" for reason in c.refused]
            lines.append("")
            continue
        lines.append(f"   batch:   {c.batch}.yaml")
        lines += [f"   mapped:  {m}" for m in c.mapped]
        lines += [f"   dropped: {d}" for d in c.dropped]
        if c.fire_times:
            lines.append(f"   next {len(c.fire_times)} fire times ({c.timezone}):")
            lines.append(f"      {'stepline cron':<27}{'dateutil.rrule':<27}")
            for ours, theirs in c.fire_times:
                flag = "" if ours == theirs else "   <-- DISAGREE"
                lines.append(f"      {_when(ours):<27}{_when(theirs):<27}{flag}")
            if c.disagreements:
                lines.append(
                    f"   WARNING: {c.disagreements} of {len(c.fire_times)} fire times differ; "
                    "check the cron before going live"
                )
        lines.append(f"   once the batch is live in production: {c.disable_statement}")
        lines.append("")
    converted = sum(1 for c in result.conversions if c.document is not None)
    lines.append(
        f"{converted} of {len(result.conversions)} job(s) converted; "
        f"{len(result.written)} file(s) written"
    )
    return "\n".join(lines)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %a")
