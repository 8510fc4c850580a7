"""Messages from a categorical distribution coded with ANS: the file sizes behind entropy,
cross-entropy and KL (the KL notebook measures them with these two functions).

Coding N symbols drawn from P with a code built for Q costs about N · H(P, Q) bits, N · H(P) of
them for a code built for P: the extra N · KL(P‖Q) bits are real bits in a real file.
"""

import constriction
import numpy as np


def information_bits(symbols_N: np.ndarray, probabilities_K: np.ndarray) -> float:
    """The ideal code length −Σ log2 q(x_i) of the symbols under `probabilities` (bits)."""
    q = np.asarray(probabilities_K, np.float64) / np.sum(probabilities_K)
    return float(-np.sum(np.log2(q[np.asarray(symbols_N)])))


# The stack starts from its smallest regular state (2^32: the words 0, 1). An empty coder's state
# is 0, where a symbol whose interval starts at 0 is pushed for free (a million dogs under any Q
# would cost 0 bits): real, but a degenerate case that would hide what the code costs.
START_WORDS = (0, 1)


def ans_file_bits(symbols_N: np.ndarray, probabilities_K: np.ndarray) -> int:
    """The size in bits (whole 32-bit words, the two start words included) of an ANS stack
    holding the symbols, each coded under `probabilities` (constriction's Categorical; a zero
    probability is raised to the coder's smallest, 2^-24, so every symbol stays codable).
    Checked to decode back."""
    model = constriction.stream.model.Categorical(np.asarray(probabilities_K, np.float64), perfect=False)
    symbols = np.asarray(symbols_N, np.int32)
    coder = constriction.stream.stack.AnsCoder(np.array(START_WORDS, np.uint32))
    coder.encode_reverse(symbols, model)
    decoded = constriction.stream.stack.AnsCoder(coder.get_compressed()).decode(model, len(symbols))
    if not np.array_equal(decoded, symbols):
        raise AssertionError("the ANS stack did not decode back to the symbols")
    return coder.num_bits()
