"""The one error the codec raises for what a user can fix: a file, an array or a model it cannot
code or decode, with a message that says which and why."""


class CodingError(Exception):
    """An input the codec cannot use as asked; the message says what to do."""


class DecodeMismatch(CodingError):
    """The coder met a symbol its model gives no probability while decoding: other probabilities
    than encoding's (another machine's model outputs), or damaged words."""
