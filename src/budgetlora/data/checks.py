"""What every data module does when a file is wrong: the one-line `DataError`, a short reason
taken from a library's exception, and the checks a file passes before any reader opens it.

Everything a user can get wrong in a data file ends as a `DataError` whose one-line message names
the file (and the line, row or field where known) and says what to do. Anything else escaping
from `budgetlora.data` is a bug.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from budgetlora.errors import DataError

PathLike = Union[str, os.PathLike]


def data_error(where: Any, what: str) -> DataError:
    # The CLI prints the message as one line; embedded library messages may carry newlines.
    return DataError(" ".join(f"{where}: {what}".split()))


def short_reason(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_file(p: Path) -> None:
    if not p.exists():
        raise data_error(p, "file not found; check the path")
    if p.is_dir():
        raise data_error(p, "is a folder, not a data file; give the file itself")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise data_error(p, f"cannot read the file ({e.strerror or e})") from None
    if size == 0:
        raise data_error(p, "the file is empty; give a file with data rows")


def read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise data_error(p, f"cannot read the file ({e.strerror or e}); check its permissions") from None
