"""The default engine, ``process``: this process, the next batch of files hashed, claimed and decoded in a thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keypatch.engines.base import Engine, register_engine


@register_engine
@dataclass(frozen=True)
class ThisProcess(Engine):
    """Compute in this process (the default): batches of ``batch_size`` images share MAE passes,
    and the next batch is hashed, claimed and decoded in a background thread while the model works
    on the current one, so the model does not wait for files."""

    name = "process"
    description = "this process (the default), files decoded ahead in a thread"

    def run(self, job: Any, files: list[Path], batch_size: int, poll: float) -> None:
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="keypatch-decode") as ahead:
                waiting: list[Path] = []
                batches = [files[s : s + batch_size] for s in range(0, len(files), batch_size)]
                pending = ahead.submit(job.prepare, batches[0]) if batches else None
                for i in range(len(batches)):
                    busy, todo = pending.result()
                    pending = ahead.submit(job.prepare, batches[i + 1]) if i + 1 < len(batches) else None
                    waiting += busy
                    if todo:
                        job.compute(todo)
            job.wait_for(waiting, batch_size, poll)
        finally:
            job.finish()
