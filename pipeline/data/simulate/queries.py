"""Search query text for the simulated search requests: each query names the product type of the item
the user has in mind, sometimes its brand, colour or material, is sometimes only one or two words, and
is sometimes misspelt (one character dropped, swapped or doubled). Which attributes a query names is
returned beside the text, since search relevance rewards candidates that share them.
"""
from __future__ import annotations

import numpy as np

from pipeline.data.simulate.world import World


def _misspell(word: str, op: float, pos: float) -> str:
    """Drop, swap or duplicate one character."""
    n = len(word)
    if op < 1 / 3:
        k = int(pos * n)
        return word[:k] + word[k + 1:]
    if op < 2 / 3:
        k = int(pos * (n - 1))
        return word[:k] + word[k + 1] + word[k] + word[k + 2:]
    k = int(pos * n)
    return word[:k + 1] + word[k:]


def make_queries(rng: np.random.Generator, world: World, targets: np.ndarray, sim: dict):
    """Query text per search request, and which target attributes (brand, colour, material) it names."""
    n = len(targets)
    u = rng.random((n, 9))
    rates = sim["query_attribute_rates"]
    short = u[:, 0] < float(sim["short_query_rate"])
    misspelt = u[:, 5] < float(sim["misspell_rate"])
    has_colour, has_material = world.colour[targets] >= 0, world.material[targets] >= 0
    names_brand = ~short & (u[:, 2] < float(rates["brand"]))
    names_colour = ~short & has_colour & (u[:, 3] < float(rates["colour"]))
    names_material = ~short & has_material & (u[:, 4] < float(rates["material"]))
    queries = np.empty(n, dtype=object)
    for k in range(n):
        item = targets[k]
        pt_words = world.ptype_names[world.ptype[item]].lower().split()
        brand = world.brand_names[world.brand[item]].lower()
        if short[k]:
            options = [[pt_words[-1]]]
            if len(pt_words) >= 2:
                options.append(pt_words[-2:])
            if " " not in brand:
                options.append([brand, pt_words[-1]])
            words = options[int(u[k, 1] * len(options))]
            names_brand[k] = brand in words
        else:
            words = ([brand] if names_brand[k] else []) \
                + ([world.colour_names[world.colour[item]].lower()] if names_colour[k] else []) \
                + ([world.material_names[world.material[item]].lower()] if names_material[k] else []) \
                + pt_words
            words = " ".join(words).split()
        if misspelt[k]:
            long_words = [j for j, w in enumerate(words) if len(w) >= 4] or [j for j, w in enumerate(words)
                                                                               if len(w) >= 2]
            if long_words:
                words = list(words)
                j = long_words[int(u[k, 6] * len(long_words))]
                words[j] = _misspell(words[j], u[k, 7], u[k, 8])
        queries[k] = " ".join(words)
    return queries, names_brand, names_colour, names_material
