"""Family clustering of models by bitwise similarity, base selection, and scoring against a ground truth.

Nothing here is told the families. Each model is summarised by a deterministic sample of its weights: for
every 16-bit float (and F32) tensor, ``SAMPLE_WORDS`` elements at evenly spaced positions (the same positions
in every model with that tensor shape). Every sample is taken to its bf16 representation (exact for bf16,
rounded for fp16 and F32, so a bf16 -> fp16 conversion costs no distance), and the distance between two models
is the fraction of differing sign and exponent bits (popcount of ``XOR & 0xFF80`` / 9) over the sampled
elements of the tensors they share (same name and shape); models with no shared tensor are at distance 1. A
fine-tune moves mostly mantissa bits and only occasionally crosses a power of two, so it lands far closer to
its base than two independently trained models with the same architecture, whose signs agree only by chance.
(On the tiny hub all 16 bits gave fine-tunes <= 0.19 vs unrelated >= 0.34; sign+exponent gives <= 0.034 vs
>= 0.22, a much wider margin, because fp16's 10 mantissa bits make fp16 fine-tunes look far on all bits.)

Clustering is average-linkage (UPGMA) agglomerative clustering cut at ``DISTANCE_THRESHOLD``. The base
of a family is its medoid among the members of the family's majority dtype (so the most tensors can be paired
for BitX): the member with the smallest total distance to the others. For a star of fine-tunes around one
base, d(fine_i, fine_j) ~ d(fine_i, base) + d(base, fine_j), so the true base is the medoid.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np

SAMPLE_WORDS = 512
# Measured on the tiny hub: fine-tunes <= 0.034 from any member of their family, unrelated models with the
# same shapes >= 0.22 apart; the cut sits between, nearer the fine-tunes (bench hubs train longer).
DISTANCE_THRESHOLD = 0.1
SIGN_EXPONENT_MASK = 0xFF80  # the top 9 bits of a bf16 word
SAMPLED_DTYPES = ("BF16", "F16", "F32")
_POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)

Sample = tuple[str, tuple[int, ...], np.ndarray]  # dtype, shape, sampled raw elements (uint16 or float32)


def sample_positions(numel: int) -> np.ndarray:
    if numel <= SAMPLE_WORDS:
        return np.arange(numel, dtype=np.int64)
    return np.linspace(0, numel - 1, SAMPLE_WORDS).astype(np.int64)


def sample_tensor(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The sampled elements of one tensor given its raw bytes (uint8 view); None for unsampled dtypes."""
    if dtype not in SAMPLED_DTYPES or len(data) == 0:
        return None
    elements = data.view(np.float32 if dtype == "F32" else np.uint16)
    return elements[sample_positions(len(elements))].copy()


def _as_bf16_words(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return values
    if dtype == "F32":
        values = values.view(np.float32)
    as_f32 = values.view(np.float16).astype(np.float32) if dtype == "F16" else values.astype(np.float32)
    bits = as_f32.view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def model_distance(a: Mapping[str, Sample], b: Mapping[str, Sample]) -> float:
    """Fraction of differing sign and exponent bits (bf16 representation) over the shared sampled tensors."""
    differing = compared = 0
    for name in sorted(a.keys() & b.keys()):
        if a[name][1] != b[name][1]:
            continue
        wa, wb = _as_bf16_words(a[name][2], a[name][0]), _as_bf16_words(b[name][2], b[name][0])
        differing += int(_POPCOUNT16[(wa ^ wb) & SIGN_EXPONENT_MASK].sum(dtype=np.int64))
        compared += 9 * len(wa)
    return differing / compared if compared else 1.0


def distance_matrix(samples: Mapping[str, Mapping[str, Sample]]) -> tuple[list[str], np.ndarray]:
    names = sorted(samples)
    matrix = np.zeros((len(names), len(names)))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            matrix[i, j] = matrix[j, i] = model_distance(samples[names[i]], samples[names[j]])
    return names, matrix


def cluster(names: list[str], matrix: np.ndarray, threshold: float = DISTANCE_THRESHOLD) -> list[list[str]]:
    """Average-linkage (UPGMA) agglomerative clustering cut at ``threshold``: families, by first member.

    The same result as scikit-learn's ``AgglomerativeClustering(linkage="average", distance_threshold=...)``
    (average linkage never merges at a smaller distance than before, so stopping at the first merge above the
    threshold is the cut), in a few lines of numpy: importing scikit-learn or scipy costs more than the
    clustering of a few thousand models.
    """
    n = len(names)
    distances = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(distances, np.inf)
    sizes = np.ones(n)
    members = [[name] for name in names]
    for _ in range(n - 1):
        flat = int(np.argmin(distances))
        i, j = divmod(flat, n)
        if not distances[i, j] <= threshold:
            break
        merged = (distances[i] * sizes[i] + distances[j] * sizes[j]) / (sizes[i] + sizes[j])
        distances[i, :] = merged
        distances[:, i] = merged
        distances[i, i] = np.inf
        distances[j, :] = np.inf
        distances[:, j] = np.inf
        sizes[i] += sizes[j]
        members[i] += members[j]
        members[j] = []
    return sorted((sorted(m) for m in members if m), key=lambda g: g[0])


def choose_base(members: list[str], names: list[str], matrix: np.ndarray, dtype_of: Mapping[str, str],
                fixed_bases: set[str] = frozenset()) -> str:
    """The family's base: an already-chosen base if the family has one, else the majority-dtype medoid."""
    kept = sorted(m for m in members if m in fixed_bases)
    if kept:
        return kept[0]
    majority = Counter(dtype_of.get(m, "") for m in members).most_common(1)[0][0]
    candidates = [m for m in members if dtype_of.get(m, "") == majority] or members
    index = {n: i for i, n in enumerate(names)}
    cols = [index[m] for m in members]
    return min(candidates, key=lambda m: (float(matrix[index[m], cols].sum()), m))


def majority_dtype(samples: Mapping[str, Sample]) -> str:
    counts = Counter(s[0] for s in samples.values())
    return counts.most_common(1)[0][0] if counts else ""


def truth_labels(truth: Mapping) -> dict[str, str]:
    """repo -> family from a hub_truth.json document (only for scoring, never for ingest)."""
    repos = truth.get("repos", {})
    return {repo: str(info.get("family")) for repo, info in repos.items() if isinstance(info, Mapping)}


def score(families: list[list[str]], truth: Mapping) -> dict:
    """Adjusted Rand index of the found families against the ground truth, on the models both know."""
    from sklearn.metrics import adjusted_rand_score

    labels = truth_labels(truth)
    found = {m: i for i, fam in enumerate(families) for m in fam}
    common = sorted(found.keys() & labels.keys())
    if not common:
        return {"ari": None, "models_scored": 0}
    ari = float(adjusted_rand_score([labels[m] for m in common], [found[m] for m in common]))
    return {"ari": ari, "models_scored": len(common), "true_families": len(set(labels[m] for m in common)),
            "found_families": len(set(found[m] for m in common))}
