"""One measurement in a fresh process (run by the bench, never by hand).

    python bench/child.py walk <alembic.ini>        Alembic's own walk of a script directory
    python bench/child.py sync <target>             the console's first sync (the parent emptied the catalog)
    python bench/child.py page <url> <username>     one GET of an admin page, as a new worker's first request

Prints one JSON object: {"seconds": ..., "max_rss_mb": ..., ...}. `seconds`
covers the measured call only (not the interpreter's or Django's start-up);
`max_rss_mb` is the whole process's peak resident memory.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def walk(ini: str) -> dict:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    start = time.perf_counter()
    count = sum(1 for _ in ScriptDirectory.from_config(Config(ini)).walk_revisions())
    return {"seconds": time.perf_counter() - start, "count": count}


def sync(target: str) -> dict:
    import django

    django.setup()
    from opsapp.models import Revision
    from opsapp.services.catalog.sync import sync_target

    start = time.perf_counter()
    synced = sync_target(target)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "count": Revision.objects.filter(catalog_id=synced.catalog_id).count(),
        "state": synced.state,
    }


def page(url: str, username: str) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    start = time.perf_counter()
    response = client.get(url)
    body = response.content
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "status": response.status_code, "bytes": len(body)}


if __name__ == "__main__":
    verb, *args = sys.argv[1:]
    result = {"walk": walk, "sync": sync, "page": page}[verb](*args)
    result["max_rss_mb"] = max_rss_mb()
    print(json.dumps(result))
