"""
Hypothesis strategies for client names: L{names} of visible characters with single spaces
between words, every one a good name.
"""

from __future__ import annotations

import unicodedata

from hypothesis import strategies as st

BLANK = "\u115f\u1160\u3164\uffa0\u2800"


words = st.text(
    st.characters(categories=["L", "M", "N", "P", "S"], exclude_characters=BLANK),
    min_size=1,
    max_size=12,
).map(lambda word: unicodedata.normalize("NFC", word))


names = (
    st.lists(words, min_size=1, max_size=4)
    .map(" ".join)
    .filter(lambda name: len(name) <= 255 and name[0] != " " and name[-1] != " ")
)
"""Names of visible characters with single spaces between words: every one is a good name."""
