"""Partner side of federated analytics: vectors that only leave masked (SecAgg+), and PSI steps.

- :mod:`.kmeans`: one k-means step over the partner's own customers (counts, sums, SSE,
  simplified silhouette per cluster), cells under the minimum count withheld; local labels;
- :mod:`.profiles`: per-segment counts and raw-unit sums of the task features, histograms;
- :mod:`.secure_orders`: answers an admitted secure-sum order with its encoded vector;
- :mod:`.overlap`: contact identifiers normalised at home and the cardinality-only PSI steps.
"""
