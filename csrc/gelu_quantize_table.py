"""Prints gelu_avx512.h's table: the standard normal CDF Phi(x) on [-6, 6)
as 16 pieces of width 0.75, each a degree-7 polynomial in x minus the piece's
centre, fitted by least squares on 400 Chebyshev nodes (near-minimax). The
kernel indexes the 16 pieces with one AVX-512 permute per coefficient.

    python csrc/gelu_quantize_table.py > /tmp/table.txt

Refuses a table whose float32 Horner evaluation is more than 2^-23 from Phi
anywhere on [-7, 7], the bound the kernel's contract (csrc/gelu_quantize.h)
states; outside [-6, 6) the kernel uses 0 and 1, within 1e-9 of Phi.
"""

import numpy as np
from scipy.special import ndtr

LOW, HIGH, PIECES, DEGREE = -6.0, 6.0, 16, 7
WIDTH = (HIGH - LOW) / PIECES


def fit() -> np.ndarray:
    """(PIECES, DEGREE + 1) float32 coefficients, lowest power first."""
    nodes = np.cos(np.pi * (np.arange(400) + 0.5) / 400) * (WIDTH / 2)
    rows = []
    for piece in range(PIECES):
        centre = LOW + (piece + 0.5) * WIDTH
        rows.append(np.polynomial.polynomial.polyfit(nodes, ndtr(centre + nodes), DEGREE))
    return np.array(rows, dtype=np.float32)


def evaluate(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic in float32: piece index, offset from its centre,
    Horner with fused multiply-adds (one rounding each, as float64 then float32)."""
    x = x.astype(np.float32)
    piece = np.clip(np.floor((x - np.float32(LOW)) * np.float32(1 / WIDTH)), 0, PIECES - 1).astype(np.int64)
    centre = np.float32(LOW) + (piece.astype(np.float32) + np.float32(0.5)) * np.float32(WIDTH)
    t = x - centre
    acc = table[piece, -1]
    for k in range(DEGREE - 1, -1, -1):
        acc = (acc.astype(np.float64) * t + table[piece, k]).astype(np.float32)
    return np.where(x >= HIGH, np.float32(1), np.where(x < LOW, np.float32(0), acc))


def main() -> None:
    table = fit()
    x = np.linspace(-7, 7, 2_000_001).astype(np.float32)
    error = np.abs(evaluate(table, x).astype(np.float64) - ndtr(x.astype(np.float64))).max()
    if error > 2.0 ** -23:
        raise SystemExit(f"the table is {error:.3g} from Phi, past the contract's 2^-23")
    print(f"// max |table - Phi| on [-7, 7] in float32: {error:.3g}")
    for k in range(DEGREE + 1):
        quads = [", ".join(f"{v:.9e}f" for v in table[q:q + 4, k]) for q in range(0, PIECES, 4)]
        print("    {" + (",\n     ".join(quads)) + "},")


if __name__ == "__main__":
    main()
