"""LabelTree (placeholder until the implementation lands)."""


class LabelTree:  # noqa: D101
    pass
