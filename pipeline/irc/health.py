"""Region health marks: regions an operator took out of service, shared by the replicas of a lake.

One small text file, `<lake>/irc/unhealthy_regions` by default (local or s3://): one
`region [note]` a line, `#` comments, so an operator can also edit it by hand. The coordinator
re-reads it with every plan poll and never serves from a marked region (its requests go to the
plan's failover partner, then to its relocation targets: see `pipeline.irc.coordinator`).
`peerscale irc health` and `Coordinator.mark_unhealthy / mark_healthy` write it atomically.
pipeline.common.storage (pyarrow) is imported on first use, never at `import pipeline.irc`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline.irc.contract import REGION_PATTERN

HEALTH_FILE = "irc/unhealthy_regions"
HEADER = "# peerscale IRC: regions not to serve from, one `region [note]` a line (peerscale irc health)"
DEFAULT_NOTE = "marked by an operator"


def default_path(lake_root: str | os.PathLike[str]) -> str:
    """Where the replicas of a lake look for the marks."""
    root = os.fspath(lake_root)
    return f"{root.rstrip('/')}/{HEALTH_FILE}" if "://" in root else os.path.join(root, HEALTH_FILE)


def check_region(region: object) -> str:
    """The region name, or ValueError saying what a region name looks like."""
    if not isinstance(region, str) or not REGION_PATTERN.match(region):
        raise ValueError(f"invalid region name {region!r}: expected a name like eu-west-1")
    return region


def clean_note(note: object) -> str:
    """A note on one line (the file is line-based); the default when empty."""
    return " ".join(str(note or "").replace("#", " ").split()) or DEFAULT_NOTE


def read_marks(path: str) -> dict[str, str]:
    """{region: note} from the file; a missing file marks nothing. ValueError names a bad line."""
    from pipeline.common import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return {}
    marks: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        region, _, note = line.partition(" ")
        if not REGION_PATTERN.match(region):
            raise ValueError(f"{path} line {number}: {region!r} is not a region name (expected `region [note]`)")
        marks[region] = note.strip()
    return marks


def write_marks(path: str, marks: Mapping[str, str]) -> None:
    """Replace the file atomically (readers see the old or the new marks, never half)."""
    from pipeline.common import storage

    lines = [HEADER] + [f"{region} {note}".rstrip() for region, note in sorted(marks.items())]
    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    storage.write_text_atomic(path, "\n".join(lines) + "\n")


def set_mark(path: str, region: str, note: str | None) -> dict[str, str]:
    """Mark `region` unhealthy with `note` (None: healthy again), keeping the other marks; the new marks.

    Read-modify-write of one file: two writers at the same instant may lose one mark (re-read to check).
    """
    marks = read_marks(path)
    if note is None:
        marks.pop(check_region(region), None)
    else:
        marks[check_region(region)] = clean_note(note)
    write_marks(path, marks)
    return marks
