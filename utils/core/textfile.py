"""The one reader of the text files users write: classes, anchors, annotation files and image lists.

Editors on Windows save a UTF-8 byte-order mark (Notepad) and CRLF line ends. Read naively, the mark sticks to the
first name ("\\ufeffRBC" is not "RBC") and a lone CR can end up inside one, so both are removed here and said once
per file and process (a note naming the file), never left to mis-read a name. A UTF-16 file (Notepad's "Unicode")
is decoded by its byte-order mark, also with a note. Bytes that are not UTF-8 are a UserError naming the file, the
line and the line's bytes: a name that cannot be decoded cannot be matched with anything.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from utils.core.config import UserError

__all__ = ["display_path", "read_text_lines"]

_BOMS = ((b"\xef\xbb\xbf", "utf-8", "a UTF-8 byte-order mark"), (b"\xff\xfe", "utf-16-le", "UTF-16 (little-endian)"),
         (b"\xfe\xff", "utf-16-be", "UTF-16 (big-endian)"))
_LINE_END = re.compile(r"\r\n|\r|\n")
_SHOWN_BYTES = 160  # of a line that does not decode; enough to recognise a path
NAMES_FIX = "; if it names a file whose name is not UTF-8, rename that file (such a name cannot be written in UTF-8)"
_noted: set[str] = set()  # files whose encoding note this process has printed


def display_path(path: str | os.PathLike) -> str:
    """A path as text that can be printed: a name that is not UTF-8 (held by Python as surrogate escapes) is shown
    by its bytes, ``b'caf\\xe9.jpg'``, since printing it as text fails."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(text))
    return text


def read_text_lines(path: str | os.PathLike, *, what: str, names_files: bool = False, log=print) -> list[str]:
    """Every line of a text file (line 1 first, blank ones included, line ends removed), decoded as UTF-8.

    A byte-order mark (UTF-8 or UTF-16) and CRLF / CR line ends are removed, with one note (through ``log``) per
    file and process. ``what`` names the file in messages ("classes file"); ``names_files``: its lines name files
    (annotation files, image lists), so undecodable bytes are likely a file name that needs renaming. Raises
    FileNotFoundError for a missing file and UserError naming the file, line and bytes when it is not UTF-8 text.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {display_path(path)}: no such file")
    data = file.read_bytes()
    bom, encoding, bom_text = next(((b, e, t) for b, e, t in _BOMS if data.startswith(b)), (b"", "utf-8", ""))
    try:
        text = data[len(bom):].decode(encoding)
    except UnicodeDecodeError as exc:
        message = _not_text(data, start=len(bom) + exc.start, encoding=encoding, what=what, path=path)
        raise UserError(message + (NAMES_FIX if names_files else "")) from exc
    found = [f"{bom_text} (removed)"] if bom else []
    if "\r" in text:
        found.append("Windows line ends (CRLF, read as plain line ends)" if "\r\n" in text
                     else "old Mac line ends (CR, read as plain line ends)")
    if found:
        _note_once(path, f"note: {what} {display_path(path)}: {' and '.join(found)}", log=log)
    lines = _LINE_END.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines  # the end of the last line is no extra line


def _not_text(data: bytes, *, start: int, encoding: str, what: str, path) -> str:
    """The message for bytes that do not decode: the file, the line and its bytes (trimmed to a readable length)."""
    line_start = data.rfind(b"\n", 0, start) + 1
    line_end = data.find(b"\n", start)
    line = data[line_start:len(data) if line_end < 0 else line_end].rstrip(b"\r")
    shown = line if len(line) <= _SHOWN_BYTES else line[:_SHOWN_BYTES] + b"..."
    number = data.count(b"\n", 0, start) + 1
    return f"{what} {display_path(path)} line {number}: not {encoding.upper()} text: {shown!r}; save the file as UTF-8"


def _note_once(path, message: str, *, log) -> None:
    key = os.path.realpath(path)
    if key in _noted:
        return
    _noted.add(key)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank reads the files; one note is enough
        log(message)
