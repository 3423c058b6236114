"""Files on a shared network drive: written whole or not at all.

Every file the trainer leaves in --model_folder (checkpoints, their markers, tokenizers, averaged weights) is
written under a unique temporary name in the target folder, flushed and fsynced, then renamed: a reader on another
node never sees half a file, and a crash mid-write leaves only a temporary, which `remove_stale_temporaries` drops.
"""

import os
import re
import uuid

TEMPORARY_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]+$")


def temporary_path(final: str) -> str:
    folder, name = os.path.split(final)
    return os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")


def write_new_file(final: str, write) -> None:
    """Write through `write(file)` (a binary file) to a temporary beside `final`, fsync, and rename to `final`.
    `final` must not exist: CIFS refuses to rename over a file another node holds open."""
    tmp = temporary_path(final)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(final: str, text: str) -> None:
    write_new_file(final, lambda f: f.write(text.encode("utf-8")))


def replace_text(final: str, text: str) -> None:
    """`write_text` over a file that may exist (one no other process holds open, such as config.json)."""
    if os.path.exists(final):
        os.remove(final)
    write_text(final, text)


def fsync_folder(folder: str) -> None:
    """Make the renames in `folder` durable, where the file system allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some network filesystems cannot open folders; the files themselves were fsynced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str) -> None:
    """Rank 0 at start: temporary files left by a writer that died mid-write are garbage."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if TEMPORARY_NAME.match(name):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
