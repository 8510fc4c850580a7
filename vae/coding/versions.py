"""The library versions that decide what a compressed file decodes to, and the one line a file
that does not decode here ends in.

A file decodes to its images where the decoder sees the integers the encoder saw
(`fixed_point`). jax and jaxlib compile the float64 model whose outputs are rounded to them,
numpy and constriction turn them into the coder's probabilities and code: a change of these
can change an output by more than the rounding absorbs, or the coder's quantisation. A file
therefore records the writer's versions (the header's), and a decode that goes wrong names
both sides'.

Imports nothing of the package but `errors`.
"""

from importlib import metadata

from vae.coding.errors import CodingError

LIBRARIES = ("jax", "jaxlib", "numpy", "constriction")


def library_versions() -> dict[str, str]:
    """{library: version} of this process, for every library in LIBRARIES."""
    return {name: metadata.version(name) for name in LIBRARIES}


def describe(versions: dict[str, str] | None) -> str:
    """'jax 0.10.2, jaxlib 0.10.2, numpy 2.4.6, constriction 0.5.0', or what is not known."""
    if not versions:
        return "versions the file does not record"
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def decode_failure(name: str, problem: str, writer: dict[str, str] | None) -> CodingError:
    """The one-line error of a file that went wrong while decoding (a symbol the coder could not
    code, a checksum that does not match): what happened and the two sides' versions."""
    reader = library_versions()
    if writer and writer != reader:
        advice = "decode it where the writer's versions are installed"
    else:
        advice = ("this machine's model outputs differ from the writer's by more than the coder's rounding "
                  "absorbs (see docs/compression.md); decode it on the machine that wrote it")
    return CodingError(f"{name} did not decode to the images that were compressed: {problem}. Written with "
                       f"{describe(writer)}; read with {describe(reader)}: {advice}")
