"""The run folder: atomic writes, refusal to clobber a finished run, one live run per folder.

Every file a run writes goes through a temporary name and `os.replace`, so a run killed at any
moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from budgetlora.errors import RunDirError

LOCK_NAME = ".lock"
FINISHED_MARK = "metrics.json"


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], *, directory: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write into; when the block ends without an error it
    replaces `path` in one rename, otherwise it is removed and `path` is untouched.

    The one write-then-rename of the package: files (the caller writes the temporary file by any
    means: numpy, safetensors, torch.save) and folders (`directory=True`: an adapter, a checkpoint),
    where an existing folder is first renamed aside and dropped only once the new one stands.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp makes the file private (0600); a run's outputs are ordinary files others may read.
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Union[str, Path]) -> None:
    """Drop the `.tmp-NAME-*` / `.old-NAME-*` folders a run killed inside `atomic_path` left."""
    path = Path(path)
    for stale in [*path.parent.glob(f".tmp-{path.name}-*"), *path.parent.glob(f".old-{path.name}-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Union[str, Path], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def is_finished_run(path: Path) -> bool:
    metrics = Path(path) / FINISHED_MARK
    if not metrics.is_file():
        return False
    try:
        return bool(json.loads(metrics.read_text(encoding="utf-8")).get("finished"))
    except (OSError, ValueError):
        return False


def check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test.", delete=True)
        probe.close()
    except OSError as e:
        raise RunDirError(f"{path}: output folder is not writable ({e.strerror or e})") from None


class RunLock:
    """A lock file holding the owner's pid, so that two runs never write into one folder.

    A lock whose process is gone (killed, machine rebooted) is stale and is taken over.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._owner_alive():
                    owner = self.path.read_text(encoding="utf-8", errors="replace").strip()
                    raise RunDirError(
                        f"{self.path.parent}: another budgetlora run (pid {owner.split()[0]}) is writing to "
                        "this folder; wait for it or choose another --output-dir"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is dead
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise RunDirError(f"{self.path}: could not take the run lock")

    def _owner_alive(self) -> bool:
        try:
            pid_text, host = (self.path.read_text(encoding="utf-8").split() + [""])[:2]
            pid = int(pid_text)
        except (OSError, ValueError):
            return False  # unreadable or half-written lock: treat as stale
        if host and host != socket.gethostname():
            return True  # another machine's process: we cannot tell, so do not steal it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def prepare_output_dir(path: Union[str, Path, None], overwrite: bool = False) -> Path:
    """Create/validate the folder; refuse to replace a finished run unless asked."""
    if not path:
        raise RunDirError("output_dir: give --output-dir DIR for the run's outputs")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a folder")
    if is_finished_run(out) and not overwrite:
        raise RunDirError(
            f"{out}: holds a finished run; choose another --output-dir or pass --overwrite to replace it"
        )
    check_writable(out)
    return out


def read_json_object(path: Union[str, Path]) -> dict[str, Any]:
    """A JSON file holding an object (a run's metrics, an evaluation report), or a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: not a JSON object")
    return data
