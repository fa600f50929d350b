"""Reading a target's script directory: fingerprint and one-pass catalog load.

This is the only module that imports migration files, and only through
Alembic's own API: `Script._list_py_dir` and `Script._from_path`, the two
steps `ScriptDirectory._load_revisions` runs per file. Calling them per file
(instead of iterating `_load_revisions`, whose generator dies at the first
broken file) reports a file failing to import by name with its error. The
graph facts come from `topology` (linear time, Alembic's definitions), not
from `RevisionMap`, except when the graph is irregular: then Alembic's map
reports the error in its own words.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsapp.services.catalog.topology import Facts, compute_facts
from opsapp.targets import TargetConfig, mask_url

if TYPE_CHECKING:
    from alembic.script import Script, ScriptDirectory

_CREATE_DATE_RE = re.compile(r"^\s*Create Date:\s*(.+?)\s*$", re.MULTILINE)


@contextmanager
def _preserved_sys_path() -> Iterator[None]:
    # ScriptDirectory.from_config prepends `prepend_sys_path` on every call;
    # in a long-lived process that would grow sys.path without bound.
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def open_script_directory(config: TargetConfig) -> ScriptDirectory:
    """The target's ScriptDirectory (no migration file is imported). Raises ScriptDirectoryError."""
    from opsapp.services.alembic_api import script_directory

    with _preserved_sys_path():
        return script_directory(config)


@dataclass(frozen=True)
class ScriptLocations:
    """Where a script directory's files are: what the fingerprint stats."""

    dir: str  # ScriptDirectory.dir
    version_locations: tuple[Path, ...]  # ScriptDirectory._version_locations


def script_locations(config: TargetConfig) -> ScriptLocations:
    """ScriptDirectory.dir and ._version_locations as Alembic computes them, read from the ini
    without importing Alembic when the ini is plain (a path for script_location; version_locations
    absent or split by path_separator); otherwise, and for every error, from Alembic itself.

    Raises ScriptDirectoryError when the script directory cannot be opened.
    """
    plain = _plain_locations(config)
    if plain is not None:
        return plain
    sd = open_script_directory(config)
    return ScriptLocations(sd.dir, tuple(sd._version_locations))


_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}


def _plain_locations(config: TargetConfig) -> ScriptLocations | None:
    # Alembic's Config.file_config and ScriptDirectory.from_config, for the plain cases only.
    ini = Path(config.alembic_ini)
    parser = configparser.ConfigParser({"here": ini.absolute().parent.as_posix()})
    try:
        if not parser.read([ini], encoding="locale"):
            return None
        location = parser.get("alembic", "script_location", fallback=None)
        versions = parser.get("alembic", "version_locations", fallback=None)
        separator = parser.get("alembic", "path_separator", fallback=None)
    except (configparser.Error, OSError, UnicodeDecodeError, ValueError):
        return None
    if not location or (":" in location and not os.path.isabs(location)) or not os.access(location, os.F_OK):
        return None  # missing (Alembic's error), a package resource, or a path Alembic reports
    if not versions:
        return ScriptLocations(str(Path(location)), (Path(location, "versions").absolute(),))
    if separator not in _SEPARATORS:
        return None  # the legacy split (with a deprecation warning) or an invalid separator
    parts = [part.strip() for part in versions.split(_SEPARATORS[separator]) if part]
    if any(":" in part and not os.path.isabs(part) for part in parts):
        return None
    return ScriptLocations(str(Path(location)), tuple(Path(part).absolute() for part in parts))


def _walk_files(location: Path) -> Iterator[tuple[str, int, int]]:
    stack = [location]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    stack.append(Path(entry.path))
            elif entry.name.endswith(".py"):
                st = entry.stat()
                yield entry.path, st.st_size, st.st_mtime_ns


def fingerprint_of(sd: ScriptLocations, ini: Path) -> str:
    """sha256 over (name, size, mtime) of every .py under the version locations, env.py and the ini."""
    digest = hashlib.sha256()
    items: list[tuple[str, int, int]] = []
    for extra in (Path(sd.dir) / "env.py", ini):
        try:
            st = extra.stat()
            items.append((str(extra), st.st_size, st.st_mtime_ns))
        except OSError:
            items.append((str(extra), -1, -1))
    for location in sd.version_locations:
        items.extend(_walk_files(Path(location)))
    for name, size, mtime in sorted(items):
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


@dataclass
class LoadedCatalog:
    """The result of reading a script directory once."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    heads: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def _error(path: str | None, exc: BaseException | str) -> dict[str, str]:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return {"file": path or "", "error": mask_url(text)[:2000]}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def load_catalog(config: TargetConfig) -> LoadedCatalog:
    """Import every revision file of the target once and compute all rows and flags in one pass.

    Never raises for a broken script directory: problems are returned in
    `errors` (file name relative to the script directory, plus the error).
    """
    from alembic.script import Script
    from alembic.util import to_tuple

    result = LoadedCatalog()
    try:
        sd = open_script_directory(config)
    except Exception as exc:  # noqa: BLE001 - reported, never a crash
        result.errors.append(_error(None, str(exc)))
        return result
    root = Path(sd.dir)
    scripts: list[Script] = []
    with _preserved_sys_path():
        for location in sd._version_locations:
            if not location.exists():
                continue
            for path in Script._list_py_dir(sd, location):
                try:
                    script = Script._from_path(sd, path.resolve())
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken file is data, not a crash
                    result.errors.append(_error(_relative(path, root), exc))
                    continue
                if script is not None:
                    scripts.append(script)
    if result.errors:
        return result
    facts = compute_facts(scripts)
    if facts is None:
        # Irregular graph (duplicate, unknown reference, cycle): Alembic's own map rules and reports.
        facts = alembic_facts(scripts, result)
    if result.errors or facts is None:
        return result
    by_id = {script.revision: script for script in scripts}
    total = len(facts.walk)
    for index, rev in enumerate(facts.walk):
        script = by_id[rev]
        labels = list(script._orig_branch_labels)
        longdoc = script.longdoc
        match = _CREATE_DATE_RE.search(longdoc)
        result.rows[rev] = {
            "down_revisions": list(to_tuple(script.down_revision, default=())),
            "branch_labels": labels,
            "branch_labels_text": " ".join(labels)[:500],
            "depends_on": list(to_tuple(script.dependencies, default=())),
            "message": script.doc,
            "docstring": longdoc,
            "create_date": match.group(1)[:64] if match else "",
            "path": _relative(Path(script.path), root),
            # walk order is heads first; position counts from the bases.
            "position": total - 1 - index,
            "is_head": facts.is_head[rev],
            "is_base": facts.is_base[rev],
            "is_branch_point": facts.is_branch_point[rev],
            "is_merge_point": facts.is_merge_point[rev],
        }
    result.heads = list(facts.heads)
    return result


def alembic_facts(scripts: list[Script], result: LoadedCatalog) -> Facts | None:
    """Alembic's RevisionMap over `scripts`: its errors go to `result.errors`, else its facts.

    The reference the linear facts are tested against, and the fallback for irregular graphs.
    """
    from alembic.script.revision import RevisionMap

    rmap = RevisionMap(lambda: scripts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ordered = list(rmap.iterate_revisions("heads", "base", inclusive=True, assert_relative_length=False))
        except Exception as exc:  # noqa: BLE001 - a broken graph is reported
            ordered = []
            result.errors.append(_error(None, exc))
    for warning in caught:
        text = str(warning.message)
        if "present more than once" in text or "is not present" in text:
            result.errors.append(_error(None, text))
    if result.errors:
        return None
    return Facts(
        walk=[s.revision for s in ordered],
        heads=list(rmap.heads),
        bases=list(rmap.bases),
        is_head={s.revision: s.is_head for s in ordered},
        is_base={s.revision: s.is_base for s in ordered},
        is_branch_point={s.revision: s.is_branch_point for s in ordered},
        is_merge_point={s.revision: s.is_merge_point for s in ordered},
    )
