"""Writes ``sqlite_v7.db``, a file of sqlite schema version 7, with the TaskHub that had it.

    PYTHONPATH=/path/to/a/checkout/at/schema/7/src python tests/store/data/make_sqlite_v7.py

As ``make_sqlite_v6``, with the same batches: all but the last folded into the tables, the
last one still in the journal (a row of layout 2, schema 6's and 7's) because the hub was killed
before its next fold. The migration test opens a copy with today's engine and expects
:func:`contents` back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from taskhub.records import WriteBatch
from tests.store.data import killed_hub, make_sqlite_v6

FILE = Path(__file__).parent / "sqlite_v7.db"
VERSION = 7


def contents() -> list[WriteBatch]:
    """The batches the file was made of, in order: schema 6's file's (and 5's)."""
    return make_sqlite_v6.contents()


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else FILE
    killed_hub.write(out, "tests.store.data.make_sqlite_v7")
