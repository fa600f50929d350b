"""`OPS_TARGETS_FILE`: targets declared in a TOML file, read with `tomllib`.

Pure (no Django import): `console/settings.py` merges the file's targets into
`OPS_TARGETS` at start-up, and the system checks (`opsapp.checks`) re-read it
to report problems with the file name and line. Reading never raises: every
problem is returned as a `FileProblem`, and a target with a structural
problem is left out of `targets`.

The file, one `[[target]]` table per target::

    [[target]]
    name = "eu_shop"
    url_env = "EU_SHOP_DATABASE_URL"    # the variable holding the URL: secrets stay in the environment
    alembic_ini = "/srv/shop/alembic.ini"   # relative paths are relative to this file
    isolation_level = "REPEATABLE READ"     # optional, default SERIALIZABLE
    tags = { region = "eu", tier = "prod" } # optional

`url = "postgresql://host/db"` may replace `url_env` for a URL without a
password; a URL holding a password in the file is refused.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KEYS = ("name", "url", "url_env", "alembic_ini", "isolation_level", "tags")
TAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,62}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_RE = re.compile(r"^\s*\[\[\s*target\s*\]\]\s*(#.*)?$")
_ANY_TABLE_RE = re.compile(r"^\s*\[")
# user:password@ in a URL: the password would sit in the file (and in version control).
_URL_PASSWORD_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:[^@]+@")


@dataclass(frozen=True)
class FileProblem:
    """One thing wrong with the file. `code` is the system check id's suffix (E080 ... E086)."""

    code: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class TargetsFile:
    path: Path
    targets: dict[str, dict] = field(default_factory=dict)
    problems: list[FileProblem] = field(default_factory=list)


def _table_lines(text: str) -> list[int]:
    """1-based line of each `[[target]]` header, in order (the n-th table of the parsed list)."""
    return [number for number, line in enumerate(text.splitlines(), 1) if _TABLE_RE.match(line)]


def _key_lines(text: str, start: int) -> dict[str, int]:
    """Line of each `key =` of the table whose header is on line `start` (up to the next table)."""
    lines = text.splitlines()
    found: dict[str, int] = {}
    for number in range(start + 1, len(lines) + 1):
        line = lines[number - 1]
        if _ANY_TABLE_RE.match(line):
            break
        match = re.match(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*[.=]", line)
        if match:
            found.setdefault(match.group(1).strip('"'), number)
    return found


def load_targets_file(path: str | Path, environ: Mapping[str, str]) -> TargetsFile:
    """Read `path`; return its targets as `OPS_TARGETS` entries plus every problem found.

    Each target's entry has the keys of an environment target (URL,
    ALEMBIC_INI, ISOLATION_LEVEL) plus TAGS, URL_ENV, SOURCE (the file) and
    LINES (key -> line, "" -> the table's header line) for messages.
    """
    path = Path(path)
    result = TargetsFile(path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.problems.append(FileProblem("E080", f"OPS_TARGETS_FILE {str(path)!r} cannot be read: {exc}."))
        return result
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python >= 3.13 exposes lineno/colno; the message carries "(at line L, column C)" everywhere.
        found = re.search(r"at line (\d+)", str(exc))
        line = getattr(exc, "lineno", None) or (int(found.group(1)) if found else None)
        result.problems.append(FileProblem("E081", f"{path}: not valid TOML: {exc}.", line))
        return result
    unknown_top = [key for key in data if key != "target"]
    for key in unknown_top:
        result.problems.append(
            FileProblem("E082", f"{path}: unknown top-level key {key!r}; declare targets as [[target]] tables.")
        )
    tables = data.get("target", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        result.problems.append(FileProblem("E082", f"{path}: 'target' must be an array of tables: [[target]]."))
        return result
    headers = _table_lines(text)
    for index, table in enumerate(tables):
        header = headers[index] if index < len(headers) else None
        lines = _key_lines(text, header) if header else {}
        lines[""] = header or 0
        _read_table(result, table, lines, environ)
    return result


def _at(path: Path, line: int | None) -> str:
    return f"{path}, line {line}" if line else str(path)


def _read_table(result: TargetsFile, table: dict, lines: dict[str, int], environ: Mapping[str, str]) -> None:
    path = result.path

    def problem(code: str, key: str, message: str) -> None:
        line = lines.get(key) or lines.get("")
        result.problems.append(FileProblem(code, f"{_at(path, line)}: {message}", line))

    ok = True
    for key in table:
        if key not in KEYS:
            problem("E082", key, f"unknown key {key!r} (allowed: {', '.join(KEYS)}).")
            ok = False
    name = table.get("name")
    if not isinstance(name, str) or not name:
        problem("E083", "name" if "name" in table else "", 'this [[target]] has no name = "...".')
        return
    if name in result.targets:
        first = result.targets[name]["LINES"][""]
        problem("E083", "name", f"target {name!r} is declared twice (first at line {first}).")
        return
    for key in ("url", "url_env", "alembic_ini", "isolation_level"):
        if key in table and not isinstance(table[key], str):
            problem("E082", key, f"target {name!r}: {key} must be a string.")
            ok = False
    url = ""
    if "url" in table and "url_env" in table:
        problem("E084", "url_env", f"target {name!r}: give url or url_env, not both.")
        ok = False
    elif isinstance(table.get("url"), str):
        url = table["url"]
        if _URL_PASSWORD_RE.match(url.strip()):
            problem(
                "E084",
                "url",
                f"target {name!r}: the url holds a password; put the URL in an environment variable and name it "
                "with url_env instead.",
            )
            ok = False
    elif isinstance(table.get("url_env"), str):
        variable = table["url_env"]
        if not _ENV_NAME_RE.match(variable):
            problem("E084", "url_env", f"target {name!r}: url_env {variable!r} is not a variable name.")
            ok = False
        elif not environ.get(variable, "").strip():
            problem("E084", "url_env", f"target {name!r}: the environment variable {variable} (url_env) is not set.")
            ok = False
        else:
            url = environ[variable]
    else:
        problem("E084", "", f"target {name!r} has no url_env (or url).")
        ok = False
    tags = table.get("tags", {})
    if not isinstance(tags, dict):
        problem("E086", "tags", f'target {name!r}: tags must be a table, e.g. tags = {{ region = "eu" }}.')
        ok = False
        tags = {}
    for key, value in tags.items():
        if not TAG_RE.match(key) or not isinstance(value, str) or not value or len(value) > 100:
            problem(
                "E086",
                "tags",
                f"target {name!r}: tag {key!r} = {value!r}: tag names start with a letter, values are non-empty "
                "strings of at most 100 characters.",
            )
            ok = False
    if not ok:
        return
    ini = table.get("alembic_ini", "")
    if ini and not Path(ini).is_absolute():
        ini = str((path.parent / ini).resolve())
    result.targets[name] = {
        "URL": url,
        "ALEMBIC_INI": ini,
        "ISOLATION_LEVEL": table.get("isolation_level", "SERIALIZABLE"),
        "TAGS": {str(k): str(v) for k, v in sorted(tags.items())},
        "URL_ENV": table.get("url_env", ""),
        "SOURCE": str(path),
        "LINES": dict(lines),
    }


def where(raw: Mapping, key: str) -> str:
    """' (FILE, line N)' for a target from the file ('' for one from the environment)."""
    if not raw.get("SOURCE"):
        return ""
    lines = raw.get("LINES") or {}
    return f" ({_at(Path(raw['SOURCE']), lines.get(key) or lines.get(''))})"
