"""FID-C10 / KID-C10 of a set of images against CIFAR-10's train split (``evaluate fid``): the features
of our CIFAR-10 classifier, and the class bookkeeping between a model's, the classifier's and the
data's class lists."""
from __future__ import annotations

import numpy as np

from .metrics import fid, kid, predict_from_features


def class_map(names_from: list[str] | None, names_to: list[str] | None, n_from: int, n_to: int):
    """Index in one class list -> index in another, by (lower-case) name; by index when names are missing."""
    if names_from and names_to:
        low = [n.lower() for n in names_to]
        if all(n.lower() in low for n in names_from):
            return np.array([low.index(n.lower()) for n in names_from])
        return None
    return np.arange(n_from) if n_from <= n_to else None


def class_name(model, label_list):
    if label_list is None:
        return None
    names = model.class_names or []
    return names[label_list[0]] if label_list[0] < len(names) else label_list[0]


def test_split_features(clf, test, n: int, seed: int, batch_size: int):
    """(features, classifier labels or None) of n random test images (all of them if n covers the split)."""
    from .metrics import extract_features

    idx = np.sort(np.random.default_rng(seed).choice(len(test), n, replace=False)) if n < len(test) else np.arange(n)
    feats = extract_features(clf, test.images[idx], batch_size, desc="features (test split)")
    remap = class_map(test.class_names, clf.class_names, len(test.class_names), clf.num_classes)
    return feats, None if remap is None else remap[test.labels[idx]]


def sample_labels(model, clf, ref, label_list, per_class: bool):
    """(classifier labels of the samples or None, the reference class to score against or None)."""
    if label_list is None:
        return None, None
    nc = model.num_classes
    to_clf = class_map(model.class_names, clf.class_names, nc, clf.num_classes)
    to_ref = class_map(model.class_names, ref.class_names, nc, len(ref.class_names))
    labels = None if to_clf is None else to_clf[np.array(label_list)]
    if per_class:
        return labels, None
    if to_ref is None:
        raise ValueError(f"cannot match {model.name}'s classes with the reference data's classes")
    return labels, int(to_ref[label_list[0]])


def scores(clf, feats, ref, ref_label, labels, kid_subsets: int, kid_subset_size: int, seed: int) -> dict:
    """FID-C10, KID-C10 (mean, std over subsets) and, with labels, the classifier's accuracy."""
    ref_feats = ref.features if ref_label is None else ref.features[ref.labels == ref_label]
    out = {"reference_n": int(len(ref_feats)), "fid_c10": fid(feats, ref.stats(ref_label))}
    out["kid_c10_mean"], out["kid_c10_std"] = kid(feats, ref_feats, subsets=kid_subsets,
                                                  subset_size=kid_subset_size, seed=seed)
    out["kid_c10_subsets"], out["kid_c10_subset_size"] = kid_subsets, min(kid_subset_size, len(feats), len(ref_feats))
    if labels is not None:
        out["accuracy"] = float((predict_from_features(clf, feats) == labels).mean())
    return out


def sample_uint8(model, n: int, batch_size: int, seed: int = 0, labels: list[int] | None = None, progress=None,
                 **sample_kw) -> np.ndarray:
    """n samples (image i from seed + i) as 8-bit images, as the reference images are, in batches;
    ``progress(k)`` after each step of a batch of k."""
    from ..images import to_uint8
    from ..sampling.run import sample

    images = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        res = sample(model, seeds=[seed + start + i for i in range(k)], n=k,
                     labels=None if labels is None else labels[start:start + k],
                     progress=(lambda r: progress(k)) if progress else None, **sample_kw)
        images.append(to_uint8(res.images))
    return np.concatenate(images)
