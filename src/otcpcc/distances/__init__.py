"""Class-to-class distances (placeholder until the batched implementation lands)."""


def class_distances(features, labels, distance="l2", **options):  # noqa: D103
    raise NotImplementedError
