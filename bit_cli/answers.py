"""bit-predict's answers: a file's top classes, and how they print (a table, JSON lines).

A table can be printed as the answers come: `table_header` first (its width from all the
file names), then `table_rows` of each answer.

Example:
    >>> answer = Answer("cat.jpg", (TopClass(0, "cat", 0.9), TopClass(1, "dog", 0.1)))
    >>> print(format_json_line(answer))
    {"file": "cat.jpg", "top_k": [{"class_id": 0, "class_name": "cat", "probability": 0.9}, ...]}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class TopClass:
    """One of a file's top classes: its id, its name (None where unknown), its probability."""

    class_id: int
    name: str | None
    probability: float


@dataclasses.dataclass(frozen=True)
class Answer:
    """A file's top classes, most probable first; or, where it could not be read, `error`.

    Example:
        >>> Answer("cat.jpg", (TopClass(0, "cat", 0.9), TopClass(1, "dog", 0.1)))
    """

    path: str
    top_classes: tuple[TopClass, ...] = ()
    error: str | None = None


def _name(top_class: TopClass) -> str:
    return top_class.name if top_class.name is not None else ""


def table_width(paths: Sequence[str]) -> int:
    """The width of a table's file column for these file names.

    Example:
        >>> table_width(["cat.jpg", "a/longer/name.png"])
        17
    """
    return max([len("file"), *(len(path) for path in paths)])


def table_header(width: int) -> str:
    """The header row of a table whose file column is `width` wide.

    Example:
        >>> table_header(7)
        'file     rank  class  probability  name'
    """
    return f"{'file':<{width}}  rank  class  probability  name"


def table_rows(answer: Answer, width: int) -> list[str]:
    """An answer's rows of a table: a row per class, the file named on the first; or its error.

    Example:
        >>> table_rows(Answer("cat.jpg", (TopClass(0, "cat", 0.9),)), 7)
        ['cat.jpg     1      0       0.9000  cat']
    """
    if answer.error is not None:
        return [f"{answer.path:<{width}}  error: {answer.error}"]
    return [
        f"{answer.path if rank == 1 else '':<{width}}  {rank:>4}  {top_class.class_id:>5}  "
        f"{top_class.probability:>11.4f}  {_name(top_class)}".rstrip()
        for rank, top_class in enumerate(answer.top_classes, start=1)
    ]


def format_table(answers: Sequence[Answer]) -> str:
    """The answers as a table: a row per class, the file named on its first row.

    Example:
        >>> print(format_table([Answer("cat.jpg", (TopClass(0, "cat", 0.9),))]))
        file     rank  class  probability  name
        cat.jpg     1      0       0.9000  cat
    """
    width = table_width([answer.path for answer in answers])
    rows = [table_header(width)]
    for answer in answers:
        rows += table_rows(answer, width)
    return "\n".join(rows)


def format_json_line(answer: Answer) -> str:
    """One answer as a JSON object on one line.

    Example:
        >>> format_json_line(Answer("cat.jpg", (TopClass(0, "cat", 0.9),)))
        '{"file": "cat.jpg", "top_k": [{"class_id": 0, "class_name": "cat", "probability": 0.9}]}'
    """
    if answer.error is not None:
        return json.dumps({"file": answer.path, "error": answer.error})
    top_k = [
        {"class_id": top.class_id, "class_name": top.name, "probability": top.probability}
        for top in answer.top_classes
    ]
    return json.dumps({"file": answer.path, "top_k": top_k})
