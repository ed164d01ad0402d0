"""One error type for bad input, printed as a single line by the CLI."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: names the file, line and field when known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, field: str | None = None):
        where = ":".join(str(p) for p in (path, line) if p is not None)
        what = f" field '{field}'" if field else ""
        super().__init__(f"{where}{':' if where else ''}{what} {message}".strip())
        self.path, self.line, self.field = path, line, field
