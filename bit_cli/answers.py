"""bit-predict's answers: a file's top classes, and how they print (a table, JSON lines).

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


def format_table(answers: Sequence[Answer]) -> str:
    """The answers as a table: a row per class, the file named on its first row.

    Example:
        >>> print(format_table([Answer("cat.jpg", (TopClass(0, "cat", 0.9),))]))
        file     rank  class  probability  name
        cat.jpg     1      0       0.9000  cat
    """
    width = max([len("file"), *(len(answer.path) for answer in answers)])
    rows = [f"{'file':<{width}}  rank  class  probability  name"]
    for answer in answers:
        if answer.error is not None:
            rows.append(f"{answer.path:<{width}}  error: {answer.error}")
            continue
        for rank, top_class in enumerate(answer.top_classes, start=1):
            path = answer.path if rank == 1 else ""
            rows.append(
                f"{path:<{width}}  {rank:>4}  {top_class.class_id:>5}  "
                f"{top_class.probability:>11.4f}  {_name(top_class)}".rstrip()
            )
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
