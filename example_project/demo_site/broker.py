"""kombu's filesystem transport, with every message file complete before a worker sees it.

kombu writes a message straight into the folder the worker reads. On a busy machine the
worker can pick a file up before its content is written, read nothing and stop with
"Unrecoverable error: JSONDecodeError". Here each message is written to a folder beside
it and then renamed into place, which is atomic on one filesystem.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        # The name kombu gives it: the worker reads the files in name order.
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        folder = Path(self.data_folder_out)
        staging = folder.with_name(folder.name + ".incoming")
        try:
            staging.mkdir(exist_ok=True)
            (staging / name).write_bytes(str_to_bytes(dumps(payload)))
            os.replace(staging / name, folder / name)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to {folder}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
