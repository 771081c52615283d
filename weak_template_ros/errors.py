"""The one error type for bad input: names the input, what was expected and what came."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input to a core function, a node or the CLI.

    The message always reads ``"<input>: expected <expected>, got <got>"`` so a log line, a
    diagnostics entry and a CLI error say the same thing.

    Parameters
    ----------
    name : str
        The input at fault: a parameter, a file path and field, a topic.
    expected : str
        What was expected, in words a user can act on.
    got : object
        What came instead (shape, dtype, value, missing file...).
    """

    def __init__(self, name: str, expected: str, got: object):
        self.name = str(name)
        self.expected = str(expected)
        self.got = got
        super().__init__(f"{self.name}: expected {self.expected}, got {got}")


def describe_array(a) -> str:
    """Short description of an array-like for error messages: shape and dtype."""
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is None:
        return type(a).__name__
    return f"array of shape {tuple(shape)} and dtype {dtype}"
