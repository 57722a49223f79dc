"""Functions a reader can hold: no function of the library (bit_tf/, bit_cli/, hub_export/) has
more than `MOST_CODE_LINES` lines of code, measured with `ast` and `tokenize` from the source.

A function's code lines are the lines of its definition (decorators included) that hold code:
blank lines, lines holding only a comment and the lines of docstrings (the function's own and
those of functions and classes inside it) do not count. A function defined inside another counts
in both: the outer one holds its lines too.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
LIBRARY = ("bit_tf", "hub_export", "bit_cli")
MOST_CODE_LINES = 60

_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
    tokenize.ENCODING,
}
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def code_lines(source: str) -> set[int]:
    """The numbers of the lines of `source` that hold code (a token other than a comment), less
    the lines of every docstring."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (*_FUNCTIONS, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            if is_docstring and isinstance(first.value.value, str):
                lines.difference_update(range(first.lineno, first.end_lineno + 1))
    return lines


def function_sizes(source: str) -> Iterator[tuple[str, int, int]]:
    """(qualified name, first line, code lines) of every function in `source`, nested ones
    included ("Outer.method", "function.inner")."""
    code = code_lines(source)

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (*_FUNCTIONS, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if isinstance(child, _FUNCTIONS):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    size = len(code & set(range(first, child.end_lineno + 1)))
                    yield name, child.lineno, size
                yield from visit(child, f"{name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(ast.parse(source), "")


def long_functions(root: Path, packages: tuple[str, ...], most: int) -> list[str]:
    """'path:line name: N code lines' for each function of `packages` over `most` lines."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for name, line, size in function_sizes(path.read_text()):
                if size > most:
                    found.append(f"{path.relative_to(root)}:{line} {name}: {size} code lines")
    return found


def test_code_lines_leave_out_docstrings_comments_and_blank_lines():
    source = textwrap.dedent(
        '''
        def outer(a):
            """A docstring
            of three lines.
            """
            # a comment

            total = a + 1  # code with a comment
            text = """a string
            that is code"""

            def inner():
                """Its own docstring."""
                return total

            return inner, text


        class Holder:
            @staticmethod
            def method():
                return 1
        '''
    )
    assert sorted(function_sizes(source)) == [
        ("Holder.method", 21, 3),  # the decorator, the def and the return
        ("outer", 2, 7),
        ("outer.inner", 12, 2),
    ]


def test_a_long_function_is_listed_with_its_place_and_size(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    body = "\n".join(f"    x{number} = {number}" for number in range(61))
    (package / "long.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert long_functions(tmp_path, ("toy",), MOST_CODE_LINES) == [
        "toy/long.py:1 long: 62 code lines"
    ]


def test_no_function_of_the_library_is_over_sixty_code_lines():
    found = long_functions(REPOSITORY, LIBRARY, MOST_CODE_LINES)
    assert not found, (
        f"{len(found)} function(s) over {MOST_CODE_LINES} lines of code; split each into named "
        "steps:\n" + "\n".join(found)
    )
