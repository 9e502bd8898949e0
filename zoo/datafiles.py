"""Reading a user's data files, bounded before a byte is parsed: numeric CSV tables (``gmm``,
a user's own model) and ``.npz`` archives (``dlvm``/``vae``'s MNIST, a user's own model).

Every reader checks the file first (:func:`zoo.base.check_file`: a regular, non-empty file of at
most ``MAX_DATA_BYTES``) and raises ``ValueError`` (``FileNotFoundError`` for a missing file)
naming the row, column or array at fault and the fix.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from zoo.base import check_bytes, check_file, check_float32

CSV_EXPECTED = "a CSV of numeric columns, one row per datapoint, optional header row"


def read_csv(path: str, expected: str = CSV_EXPECTED) -> Tuple[Optional[List[str]], np.ndarray]:
    """``(header, table)``: a CSV file of numeric columns as a float64 array ``[rows, columns]``;
    a first row with a non-numeric cell and no number is the ``header`` (its names, stripped),
    else ``header`` is ``None``."""
    import pandas as pd

    check_file(path, expected, text=True)
    try:
        df = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True,
                         encoding="utf-8-sig", keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse {path!r} as CSV: {e}") from e
    text = df.apply(lambda c: c.str.strip())
    empty = text == ""
    vals = text.apply(pd.to_numeric, errors="coerce")
    nanlike = text.apply(lambda c: c.str.lower().isin(["nan", "+nan", "-nan"]))
    other = vals.isna() & ~empty & ~nanlike
    header = None
    if len(df) and other.iloc[0].any() and (other | empty).iloc[0].all():  # a header row
        header = list(text.iloc[0])
        df, text, empty, vals, nanlike, other = (t.iloc[1:] for t in
                                                 (df, text, empty, vals, nanlike, other))
    if len(df) == 0:
        raise ValueError(f"{path!r} holds no data rows")
    for mask, what in ((other, "non-numeric value {v!r}; every column must be numeric"),
                       (empty, "an empty cell; drop or impute it"),
                       (nanlike | vals.isin([np.inf, -np.inf]),
                        "the non-finite value {v!r}; drop or impute it")):
        if mask.any().any():
            r, c = np.argwhere(mask.to_numpy())[0]
            raise ValueError(f"{path!r}: data row {r + 1}, column {c + 1} holds "
                             + what.format(v=text.iat[r, c]))
    arr = np.array(vals.to_numpy(dtype=np.float64), dtype=np.float64)  # writable copy
    check_float32(arr, path)
    return header, arr


def _npy_bytes(archive: Any, key: str) -> int:
    """The bytes the array ``key`` of an .npz archive takes once loaded, from its header."""
    with archive.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
    return int(np.prod(shape, dtype=object)) * dtype.itemsize


def read_npz(path: str, expected: str,
             choose: Callable[[List[str]], Sequence[str]] = list) -> Dict[str, np.ndarray]:
    """The arrays ``choose(keys)`` of an .npz archive (``keys`` in the archive's order; default:
    all), ``{key: array}`` in the order chosen. Their sizes are read from the headers and
    bounded (together at most ``MAX_DATA_BYTES``) before a byte of them is inflated; object
    arrays (pickles) are refused."""
    import zipfile

    def unreadable(e):
        return ValueError(f"{path} is not a readable .npz archive ({e}); expected {expected}")

    check_file(path, expected)
    try:
        with np.load(path, allow_pickle=False) as f, zipfile.ZipFile(path) as archive:
            keys = list(f.keys())
            chosen = list(choose(keys)) if keys else []
            size = sum(_npy_bytes(archive, key) for key in chosen)
    except Exception as e:  # zipfile.BadZipFile, OSError, a bad header (ValueError), ...
        raise unreadable(e) from None
    if not chosen:
        raise ValueError(f"{path}: the .npz archive holds no arrays; expected {expected}")
    what = f"holds arrays {', '.join(map(repr, chosen))} of" if len(chosen) > 1 else \
        f"holds an array {chosen[0]!r} of"
    check_bytes(size, path, what)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in chosen}
    except Exception as e:  # object arrays (ValueError), a corrupt member, ...
        raise unreadable(e) from None
