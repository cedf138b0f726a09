"""Results files: one CSV and/or JSONL row per attempt, appended as calls end.

Rows are written through an ordinary buffered file and flushed every few
rows and at close, which keeps each append far below a millisecond on the
loop; nothing waits on the disk per call.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Any

FIELDS = ["call_id", "campaign_id", "lead_id", "attempt_no", "outcome", "cause", "disposition", "agent_id",
          "answer_kind", "started", "ring_s", "wait_s", "talk_s", "phone", "tier", "customer_type", "follow_up",
          "local_hour"]


class ResultWriter:
    def __init__(self, directory: str | Path, stem: str, formats: list[str], flush_every: int = 200) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.paths: dict[str, Path] = {}
        self._files: list[IO[str]] = []
        self._csv: Any = None
        self._jsonl: IO[str] | None = None
        self._since_flush = 0
        self._flush_every = flush_every
        if "csv" in formats:
            path = self.directory / f"{stem}.csv"
            f = path.open("w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(f, fieldnames=FIELDS)
            self._csv.writeheader()
            self._files.append(f)
            self.paths["csv"] = path
        if "jsonl" in formats:
            path = self.directory / f"{stem}.jsonl"
            self._jsonl = path.open("w", encoding="utf-8")
            self._files.append(self._jsonl)
            self.paths["jsonl"] = path

    def write(self, row: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow(row)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(row, separators=(",", ":")) + "\n")
        self._since_flush += 1
        if self._since_flush >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        for f in self._files:
            f.flush()
        self._since_flush = 0

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files.clear()
