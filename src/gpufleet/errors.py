"""Findings are values: a code, a place and a fix. The CLI and the Ansible plugin only format them."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    """A planner verdict about a strategy: an error stops the deployment, a warning does not."""

    code: str
    message: str
    fix: str = ""
    service: str | None = None
    gpu: str | None = None  # "host:index"
    field: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = ", ".join(p for p in (f"service {self.service}" if self.service else "",
                                       f"GPU {self.gpu}" if self.gpu else "",
                                       f"field {self.field}" if self.field else "") if p)
        text = f"[{self.code}] {where}: {self.message}" if where else f"[{self.code}] {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


class InputError(Exception):
    """Bad input (a file that cannot be read, a schema violation): nothing can be planned."""

    def __init__(self, code: str, file: str, field: str, message: str, fix: str = ""):
        self.code, self.file, self.field, self.message, self.fix = code, file, field, message, fix
        super().__init__(str(self))

    def to_dict(self) -> dict:
        return {"code": self.code, "file": self.file, "field": self.field,
                "message": self.message, "fix": self.fix}

    def __str__(self) -> str:
        text = f"[{self.code}] {self.file}: {self.field}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text
