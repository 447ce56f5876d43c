"""Hypothesis strategies several test modules share: values the codec accepts."""

from __future__ import annotations

from hypothesis import strategies as st

U64 = 2**64 - 1

#: Every scalar a stored value may hold (NaN aside: it never equals itself).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
#: Values as users store them: scalars nested in lists and str-keyed dicts.
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
