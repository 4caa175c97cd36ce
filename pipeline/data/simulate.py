"""Seeded simulator of e-commerce search and recommendation logs, in the data contract's layout.

The catalog and the users come from the root seed alone; each day has its own random stream, so a
day's files depend only on the params and the day, never on which other days were simulated.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_dir
from pipeline.data.contract import CATALOG_SCHEMA, IMPRESSION_SCHEMA, TRUTH_SCHEMA, DayPaths
from pipeline.params import load_params, stage_seed

DEVICES = ("mobile", "desktop", "tablet")
NOISE_KINDS = ("none", "bot_session", "accidental_click", "missed_click")
IMPRESSION_FILE = "part-00000.parquet"
SIM_IMPRESSION_SCHEMA = pa.schema(
    list(IMPRESSION_SCHEMA) + [pa.field("f_device", pa.string()), pa.field("f_user_tenure_days", pa.int64())]
)
DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class Category:
    path: str
    median_price: float
    template: str  # placeholders: brand, series, ptype, colour, material, size
    ptypes: tuple[str, ...]
    brands: tuple[str, ...]
    series: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()


_SHOE_TYPES = ("Running Shoe", "Trail Running Shoe", "Road Racing Shoe", "Stability Running Shoe",
               "Cushioned Running Shoe")
_APPAREL_SIZES = ("XS", "S", "M", "L", "XL", "XXL")

CATEGORIES: tuple[Category, ...] = (
    Category("Shoes>Running>Men", 95.0, "{brand} Men's {series} {ptype}, {colour}, UK {size}", _SHOE_TYPES,
             ("Stridewell", "Velocor", "Kestrel", "Altura", "Pacewise", "Northmark", "Ridgeback Athletics",
              "Tempora"),
             series=("Aero", "Glide 4", "Pulse", "Summit", "Drift 2", "Vanta", "Flux", "Horizon"),
             colours=("Black", "White", "Navy", "Charcoal", "Volt Green", "Crimson", "Slate Grey", "Cobalt Blue"),
             sizes=("6", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12")),
    Category("Shoes>Running>Women", 90.0, "{brand} Women's {series} {ptype}, {colour}, UK {size}", _SHOE_TYPES,
             ("Stridewell", "Velocor", "Lumara", "Altura", "Pacewise", "Seren", "Kestrel", "Fjella"),
             series=("Aero", "Glide 4", "Pulse", "Bloom", "Drift 2", "Vanta", "Flux", "Solstice"),
             colours=("Black", "White", "Coral", "Lilac", "Sea Green", "Blush Pink", "Slate Grey", "Sky Blue"),
             sizes=("3", "3.5", "4", "4.5", "5", "5.5", "6", "6.5", "7", "8")),
    Category("Shoes>Casual>Sneakers", 70.0, "{brand} {material} {ptype}, {colour}, UK {size}",
             ("Low-Top Sneaker", "High-Top Sneaker", "Slip-On Sneaker", "Canvas Plimsoll"),
             ("Common Thread", "Marlow & Finch", "Oakhurst", "Brixley", "Uplane", "Halden", "Corso",
              "Wren Street"),
             colours=("White", "Off-White", "Black", "Tan", "Olive", "Navy", "Burgundy"),
             materials=("Leather", "Suede", "Canvas", "Recycled Knit"),
             sizes=("4", "5", "6", "7", "8", "9", "10", "11", "12")),
    Category("Clothing>Socks>Sports", 12.0, "{brand} {material} {ptype}, {colour}, Size {size}",
             ("Running Sock", "Hiking Sock", "Ankle Sock", "Compression Sock", "Crew Sock"),
             ("Nordvik", "Toeline", "Hartwell", "Sockwell & Co", "Peakstep", "Lindqvist", "Trailsmith"),
             colours=("Charcoal", "Black", "White", "Heather Grey", "Navy", "Forest Green", "Mustard"),
             materials=("Merino Wool", "Organic Cotton", "Bamboo", "Recycled Nylon", "Coolmax"),
             sizes=("S", "M", "L", "XL")),
    Category("Clothing>Outerwear>Jackets", 120.0, "{brand} {series} {material} {ptype}, {colour}, Size {size}",
             ("Rain Jacket", "Puffer Jacket", "Fleece Jacket", "Softshell Jacket", "Insulated Parka"),
             ("Fjellborn", "Outerra", "Halvard", "Coastline", "Greyfell", "Baltra", "Ardent Peak", "Mistral"),
             series=("Trek", "Storm", "Alpine", "Urban", "Coast", "Ridge"),
             colours=("Black", "Olive", "Navy", "Rust", "Sand", "Forest Green", "Burgundy", "Storm Grey"),
             materials=("Recycled Nylon", "Ripstop Polyester", "Goose Down", "Polar Fleece", "Waxed Cotton"),
             sizes=_APPAREL_SIZES),
    Category("Clothing>Tops>T-Shirts", 22.0, "{brand} {material} {ptype}, {colour}, Size {size}",
             ("Crew Neck T-Shirt", "V-Neck T-Shirt", "Long Sleeve Tee", "Polo Shirt", "Tank Top"),
             ("Basis", "Loomcraft", "Everwell", "Threadline", "Harbour & Oak", "Plainsfolk", "Kinfolk Supply"),
             colours=("White", "Black", "Navy", "Heather Grey", "Sage", "Terracotta", "Ecru", "Dusty Blue"),
             materials=("Organic Cotton", "Linen Blend", "Supima Cotton", "Merino", "Recycled Polyester"),
             sizes=_APPAREL_SIZES),
    Category("Electronics>Audio>Headphones", 110.0, "{brand} {series} {ptype}, {colour}",
             ("Wireless Headphones", "Noise Cancelling Headphones", "Wireless Earbuds", "Over-Ear Headphones",
              "Sport Earbuds", "Wired Earphones"),
             ("Sonara", "Audiq", "Veltro", "Klangwerk", "Nuvo", "Hush Labs", "Resonix", "Bassline"),
             series=("Q3", "Aria 500", "Pulse Pro", "Studio 2", "Air Mini", "Flow X", "Echo 7", "Nova"),
             colours=("Black", "White", "Midnight Blue", "Silver", "Sand", "Forest Green")),
    Category("Electronics>Audio>Speakers", 85.0, "{brand} {series} {ptype}, {colour}",
             ("Bluetooth Speaker", "Smart Speaker", "Soundbar", "Bookshelf Speakers", "Portable Party Speaker"),
             ("Sonara", "Boomfield", "Klangwerk", "Resonix", "Tonehaus", "Aurix", "Driftwave"),
             series=("Mini", "Go 2", "Home 300", "Arc", "Max", "Pebble", "Cube", "Studio"),
             colours=("Black", "White", "Slate", "Red", "Teal", "Sand")),
    Category("Electronics>Accessories>Chargers", 25.0, "{brand} {series} {size} {ptype}, {colour}",
             ("USB-C Charger", "Wireless Charging Pad", "Power Bank", "USB-C Cable", "Car Charger"),
             ("Voltra", "Chargely", "Amperio", "Nexcell", "Joltek", "Plugwise", "Tetra Power"),
             series=("GaN", "Slim", "Pro", "Mini", "Dual"),
             colours=("Black", "White", "Graphite", "Blue"),
             sizes=("20W", "30W", "45W", "65W", "100W")),
    Category("Home>Kitchen>Cookware", 45.0, "{brand} {material} {ptype} {size}",
             ("Frying Pan", "Saucepan", "Wok", "Casserole Dish", "Stock Pot", "Sauté Pan", "Griddle Pan"),
             ("Aurel", "Ferrano", "Kochwerk", "Brasserie & Co", "Hearthstone", "Merlot Kitchen", "Tavola",
              "Ironwood"),
             materials=("Stainless Steel", "Cast Iron", "Non-Stick Aluminium", "Carbon Steel", "Copper",
                        "Enamelled Cast Iron"),
             sizes=("20 cm", "24 cm", "26 cm", "28 cm", "30 cm", "32 cm")),
    Category("Home>Kitchen>Coffee", 70.0, "{brand} {series} {ptype}, {colour}",
             ("Espresso Machine", "Pour-Over Kettle", "French Press", "Burr Coffee Grinder", "Drip Coffee Maker",
              "Milk Frother"),
             ("Crema Bella", "Baristo", "Kaffeehaus", "Roastery Lane", "Moka & Co", "Brewline"),
             series=("Classic", "Pro", "Compact", "Duo", "Prima", "Uno"),
             colours=("Black", "Silver", "Cream", "Copper", "Matte White")),
    Category("Home>Bedding>Sheets", 40.0, "{brand} {material} {ptype}, {size}, {colour}",
             ("Fitted Sheet", "Duvet Cover", "Pillowcases", "Flat Sheet", "Mattress Protector"),
             ("Dreamhaven", "Linnea Home", "Slumberly", "Hearth & Loom", "Nordhem", "Quietude", "Fernhill"),
             colours=("White", "Ivory", "Sage", "Charcoal", "Dusty Pink", "Oatmeal", "Navy"),
             materials=("Egyptian Cotton", "Washed Linen", "Bamboo Lyocell", "Cotton Percale", "Cotton Sateen"),
             sizes=("Single", "Double", "King", "Super King")),
    Category("Beauty>Skincare>Face", 22.0, "{brand} {material} {ptype} {size}",
             ("Moisturiser", "Facial Cleanser", "Serum", "Night Cream", "Sunscreen", "Eye Cream", "Toner"),
             ("Lumiere Botanics", "Dermalia", "Verdant Skin", "Pura Vida Labs", "Clarisse", "Oakmoss",
              "Solenne"),
             materials=("Hyaluronic Acid", "Niacinamide", "Vitamin C", "Ceramide", "Retinol", "Aloe Vera"),
             sizes=("30 ml", "50 ml", "100 ml", "150 ml")),
    Category("Sports>Fitness>Yoga", 28.0, "{brand} {material} {ptype}, {colour}",
             ("Yoga Mat", "Yoga Block", "Resistance Bands", "Foam Roller", "Yoga Strap", "Exercise Ball"),
             ("Asana Works", "Flowform", "Zenra", "Balancia", "Lotus Lane", "Corewell"),
             colours=("Black", "Purple", "Teal", "Sage", "Coral", "Grey", "Midnight Blue"),
             materials=("Natural Rubber", "Cork", "TPE", "EVA Foam", "Jute")),
    Category("Garden>Tools>Hand Tools", 20.0, "{brand} {series} {material} {ptype}, {colour} Handle",
             ("Pruning Shears", "Hand Trowel", "Garden Fork", "Hedge Shears", "Weeding Tool", "Bulb Planter"),
             ("Greenhand", "Thornbury", "Fieldcraft", "Verdigris", "Rootwise", "Hollowell", "Bramble & Co"),
             series=("Pro", "Classic", "Ergo", "Heritage"),
             colours=("Green", "Orange", "Black", "Red"),
             materials=("Stainless Steel", "Carbon Steel", "Forged Steel", "Aluminium")),
    Category("Pets>Dogs>Beds", 50.0, "{brand} {material} {ptype}, {colour}, Size {size}",
             ("Dog Bed", "Orthopaedic Dog Bed", "Dog Blanket", "Crate Mat", "Donut Dog Bed"),
             ("Pawsome", "Hound & Hearth", "Barkley Home", "Snoozle", "Woofhaus", "Tailwind Pets"),
             colours=("Grey", "Brown", "Navy", "Cream", "Charcoal", "Olive"),
             materials=("Memory Foam", "Sherpa Fleece", "Waxed Canvas", "Faux Fur", "Recycled Polyester"),
             sizes=("S", "M", "L", "XL")),
    Category("Office>Stationery>Notebooks", 14.0, "{brand} {size} {material} {ptype}, {colour}",
             ("Notebook", "Dotted Journal", "Weekly Planner", "Sketchbook", "Spiral Notebook"),
             ("Papyra", "Inkwell & Co", "Foliant", "Quire", "Notara", "Marginalia"),
             colours=("Black", "Navy", "Sage", "Terracotta", "Mustard", "Blush"),
             materials=("Hardcover", "Softcover", "Linen Cover", "Vegan Leather"),
             sizes=("A4", "A5", "A6", "B5")),
    Category("Home>Lighting>Lamps", 60.0, "{brand} {series} {material} {ptype}",
             ("Desk Lamp", "Floor Lamp", "Bedside Lamp", "Pendant Light", "Table Lamp"),
             ("Lumen & Loft", "Halvor", "Glowhaus", "Lampwright", "Candela", "Solvik"),
             series=("Arc", "Orb", "Halo", "Nord", "Luna", "Cone"),
             materials=("Brass", "Matte Black Metal", "Ceramic", "Rattan", "Oak", "Frosted Glass")),
)


@dataclass
class World:
    """The catalog and the users: fixed by the root seed, shared by every day."""
    catalog: pa.Table
    item_ids: np.ndarray      # object array of str
    cat: np.ndarray           # category index per item
    ptype: np.ndarray         # global product-type code per item
    brand: np.ndarray         # global brand code (category, brand) per item
    colour: np.ndarray        # global colour code, -1 when the category has none
    material: np.ndarray      # global material code, -1 when the category has none
    price: np.ndarray
    quality: np.ndarray
    ptype_names: list[str]
    brand_names: list[str]
    colour_names: list[str]
    material_names: list[str]
    median_price: np.ndarray  # per category
    user_ids: np.ndarray      # object array of str
    user_pref: np.ndarray     # (users, categories), rows sum to 1
    user_pref_cdf: np.ndarray
    user_price_z: np.ndarray  # preferred log-price offset from the category median
    user_activity: np.ndarray # probability a session belongs to the user
    user_signup_days_ago: np.ndarray  # as of params users_as_of


@dataclass(frozen=True)
class _Groups:
    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray, n_groups: int) -> "_Groups":
        order = np.argsort(codes, kind="stable")
        count = np.bincount(codes, minlength=n_groups)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(order, start, count)

    def draw(self, u: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """A uniform member of each group: `u` in [0, 1) has one more axis than `groups` or the same shape."""
        if u.ndim > groups.ndim:
            groups = groups[..., None]
        offset = np.minimum((u * self.count[groups]).astype(np.int64), self.count[groups] - 1)
        return self.order[self.start[groups] + offset]


def _vocab(values) -> tuple[list[str], dict[str, int]]:
    names: list[str] = []
    index: dict[str, int] = {}
    for value in values:
        if value not in index:
            index[value] = len(names)
            names.append(value)
    return names, index


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{k:0{width}d}" for k in range(n)], dtype=object)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _range(pair, name: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in pair)
    if not 1 <= lo <= hi:
        raise ValueError(f"simulate.{name}: expected 1 <= low <= high, got {pair}")
    return lo, hi


def _as_date(value) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def build_world(params: dict) -> World:
    """The catalog and the users, derived from the root seed only."""
    sim = params["simulate"]
    n_items, n_users = int(sim["n_items"]), int(sim["n_users"])
    n_cat = len(CATEGORIES)
    if n_items < n_cat:
        raise ValueError(f"simulate.n_items must be at least {n_cat} (one per category), got {n_items}")

    ptype_names, ptype_index = _vocab(f"{c.path}|{p}" for c in CATEGORIES for p in c.ptypes)
    brand_names, brand_index = _vocab(f"{c.path}|{b}" for c in CATEGORIES for b in c.brands)
    colour_names, colour_index = _vocab(v for c in CATEGORIES for v in c.colours)
    material_names, material_index = _vocab(v for c in CATEGORIES for v in c.materials)

    rng = np.random.default_rng(stage_seed(params, "simulate:catalog"))
    cat = rng.permutation(np.arange(n_items) % n_cat)  # balanced across categories
    median = np.array([c.median_price for c in CATEGORIES])
    raw_price = median[cat] * np.exp(float(sim["price_sigma"]) * rng.standard_normal(n_items))
    price = np.maximum(np.round(raw_price) - 0.01, 0.99)  # shelf prices end in .99
    q_a, q_b = (float(v) for v in sim["quality_beta"])
    quality = rng.beta(q_a, q_b, n_items)

    ptype = np.empty(n_items, np.int64)
    brand = np.empty(n_items, np.int64)
    colour = np.full(n_items, -1, np.int64)
    material = np.full(n_items, -1, np.int64)
    titles: list[str] = []
    seen: set[str] = set()
    max_tries = int(sim["title_max_tries"])
    for i in range(n_items):
        c = CATEGORIES[cat[i]]
        for _ in range(max_tries):
            u = rng.random(6)
            pick = {name: (vals[int(u[k] * len(vals))] if vals else "")
                    for k, (name, vals) in enumerate((("ptype", c.ptypes), ("brand", c.brands), ("series", c.series),
                                                      ("colour", c.colours), ("material", c.materials),
                                                      ("size", c.sizes)))}
            title = c.template.format(**pick)
            if title not in seen:  # redraw on a clash so titles stay distinct
                break
        seen.add(title)
        titles.append(title)
        ptype[i] = ptype_index[f"{c.path}|{pick['ptype']}"]
        brand[i] = brand_index[f"{c.path}|{pick['brand']}"]
        if "{colour}" in c.template:
            colour[i] = colour_index[pick["colour"]]
        if "{material}" in c.template:
            material[i] = material_index[pick["material"]]

    item_ids = _ids("i", n_items, max(6, len(str(n_items - 1))))
    catalog = pa.Table.from_pandas(pd.DataFrame({
        "item_id": item_ids,
        "title": np.array(titles, dtype=object),
        "category": np.array([CATEGORIES[k].path for k in cat], dtype=object),
        "brand": np.array([brand_names[b].split("|", 1)[1] for b in brand], dtype=object),
        "price": price,
    }), schema=CATALOG_SCHEMA, preserve_index=False).replace_schema_metadata(None)

    urng = np.random.default_rng(stage_seed(params, "simulate:users"))
    pref = urng.dirichlet(np.full(n_cat, float(sim["user_pref_concentration"])), size=n_users)
    price_z = urng.normal(0.0, float(sim["user_price_sigma"]), n_users)
    activity = urng.lognormal(0.0, float(sim["user_activity_sigma"]), n_users)
    signup = urng.exponential(float(sim["user_tenure_mean_days"]), n_users).astype(np.int64)
    cdf = np.cumsum(pref, axis=1)
    cdf[:, -1] = 1.0

    return World(
        catalog=catalog, item_ids=item_ids, cat=cat, ptype=ptype, brand=brand, colour=colour,
        material=material, price=price, quality=quality,
        ptype_names=[p.split("|", 1)[1] for p in ptype_names],
        brand_names=[b.split("|", 1)[1] for b in brand_names],
        colour_names=colour_names, material_names=material_names, median_price=median,
        user_ids=_ids("u", n_users, max(6, len(str(n_users - 1)))),
        user_pref=pref, user_pref_cdf=cdf, user_price_z=price_z, user_activity=activity / activity.sum(),
        user_signup_days_ago=signup,
    )


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


def _make_queries(rng: np.random.Generator, world: World, targets: np.ndarray, sim: dict):
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


def plackett_luce(rng: np.random.Generator, util: np.ndarray, valid: np.ndarray, beta: float,
                   top: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank each row by Plackett-Luce with weights exp(util / beta), via Gumbel-perturbed utilities.

    Returns the column indices of the first `top` places per row, and for each place the probability
    of drawing that item given the items placed above it. Invalid entries are never placed.
    """
    perturbed = np.where(valid, util + beta * rng.gumbel(size=util.shape), -np.inf)
    rank = np.argsort(-perturbed, axis=1, kind="stable")
    r_util = np.where(np.take_along_axis(valid, rank, 1), np.take_along_axis(util, rank, 1) / beta, -np.inf)
    log_rest = np.logaddexp.accumulate(r_util[:, ::-1], axis=1)[:, ::-1]  # log-sum over items not yet placed
    with np.errstate(invalid="ignore"):  # -inf - -inf past the valid entries; never shown
        prop = np.exp(r_util[:, :top] - log_rest[:, :top])
    return rank[:, :top], np.clip(np.nan_to_num(prop), np.finfo(float).tiny, 1.0)


def simulate_day(day: str, world: World, params: dict) -> tuple[pa.Table, pa.Table, dict]:
    """One day's impressions and truth tables, and a few counts."""
    sim = params["simulate"]
    rng = np.random.default_rng(stage_seed(params, f"simulate:{day}"))
    tag = day.replace("-", "")
    day_date = dt.date.fromisoformat(day)
    day_start_us = (day_date - dt.date(1970, 1, 1)).days * DAY_US
    target_rows = int(sim["impressions_per_day"])
    if target_rows < 1:
        raise ValueError(f"simulate.impressions_per_day must be positive, got {target_rows}")
    l_lo, l_hi = _range(sim["list_length"], "list_length")
    s_lo, s_hi = _range(sim["requests_per_session"], "requests_per_session")
    n_cand = int(sim["candidates_per_request"])
    if n_cand < l_hi:
        raise ValueError(f"simulate.candidates_per_request ({n_cand}) must be >= list_length max ({l_hi})")
    beta = float(sim["ranker_noise"])
    if beta <= 0:
        raise ValueError(f"simulate.ranker_noise must be positive, got {beta}")
    n_items, n_cat = len(world.item_ids), len(CATEGORIES)

    # Sessions and requests: enough sessions to reach the day's row target, cut at the first that does.
    max_sessions = -(-target_rows // (s_lo * l_lo)) + 1
    reqs = rng.integers(s_lo, s_hi + 1, max_sessions)
    lengths = rng.integers(l_lo, l_hi + 1, int(reqs.sum()))
    rows_by_session = np.add.reduceat(lengths, np.concatenate([[0], np.cumsum(reqs)[:-1]]))
    n_sessions = min(int(np.searchsorted(np.cumsum(rows_by_session), target_rows)) + 1, max_sessions)
    reqs = reqs[:n_sessions]
    n_req = int(reqs.sum())
    lengths = lengths[:n_req]

    amplitude = float(sim["diurnal_amplitude"])
    if not 0 <= amplitude < 1:
        raise ValueError(f"simulate.diurnal_amplitude must be in [0, 1), got {amplitude}")
    hours = np.arange(24)
    hour_w = 1.0 + amplitude * np.cos(
        2 * np.pi * (hours + 0.5 - float(sim["diurnal_peak_hour"])) / 24)
    hour = rng.choice(24, n_sessions, p=hour_w / hour_w.sum())
    start_us = ((hour + rng.random(n_sessions)) * 3600e6).astype(np.int64)
    session_user = rng.choice(len(world.user_ids), n_sessions, p=world.user_activity)
    dev_mix = sim["device_mix"]
    dev_p = np.array([float(dev_mix[d]) for d in DEVICES])
    session_device = rng.choice(len(DEVICES), n_sessions, p=dev_p / dev_p.sum())
    session_bot = rng.random(n_sessions) < float(sim["bot_session_rate"])

    req_session = np.repeat(np.arange(n_sessions), reqs)
    first = np.concatenate([[0], np.cumsum(reqs)[:-1]])
    gap = rng.exponential(float(sim["session_gap_seconds"]) * 1e6, n_req)
    gap[first] = 0.0
    elapsed = np.cumsum(gap)
    elapsed -= np.repeat(elapsed[first], reqs)
    elapsed = elapsed.astype(np.int64)
    span = np.maximum.reduceat(elapsed, first)
    # A session that would run past midnight starts earlier by its span, so it ends where it began.
    start_us = np.maximum(np.where(start_us + span < DAY_US, start_us, start_us - span), 0)
    session_rank = np.empty(n_sessions, np.int64)
    session_rank[np.argsort(start_us, kind="stable")] = np.arange(n_sessions)  # session ids follow time
    ts_us = np.minimum(start_us[req_session] + elapsed, DAY_US - 1)
    order = np.argsort(ts_us, kind="stable")  # request ids follow time
    ts_us, req_session, lengths = ts_us[order], req_session[order], lengths[order]
    req_user = session_user[req_session]
    is_search = rng.random(n_req) < float(sim["search_share"])

    # Candidates per request.
    by_cat, by_ptype = _Groups.of(world.cat, n_cat), _Groups.of(world.ptype, len(world.ptype_names))
    all_items = _Groups.of(np.zeros(n_items, np.int64), 1)
    cand = np.empty((n_req, n_cand), np.int64)
    s_idx, r_idx = np.flatnonzero(is_search), np.flatnonzero(~is_search)

    mix = {k: float(v) for k, v in sim["search_candidate_mix"].items()}
    mix_total = mix["product_type"] + mix["category"] + mix["random"]
    n_pt = int(round(n_cand * mix["product_type"] / mix_total))
    n_cat_slots = int(round(n_cand * mix["category"] / mix_total))
    if n_pt < 1 or n_pt + n_cat_slots > n_cand:
        raise ValueError(f"simulate.search_candidate_mix gives {n_pt} product-type and {n_cat_slots} "
                         f"category slots out of {n_cand}")
    cdf = world.user_pref_cdf[req_user[s_idx]]
    target_cat = np.minimum((cdf < rng.random(len(s_idx))[:, None]).sum(1), n_cat - 1)
    target = by_cat.draw(rng.random(len(s_idx)), target_cat)
    cand[s_idx, 0] = target
    cand[s_idx, 1:n_pt] = by_ptype.draw(rng.random((len(s_idx), n_pt - 1)), world.ptype[target])
    cand[s_idx, n_pt:n_pt + n_cat_slots] = by_cat.draw(rng.random((len(s_idx), n_cat_slots)), target_cat)
    cand[s_idx, n_pt + n_cat_slots:] = all_items.draw(
        rng.random((len(s_idx), n_cand - n_pt - n_cat_slots)), np.zeros(len(s_idx), np.int64))
    queries, q_brand, q_colour, q_material = _make_queries(rng, world, target, sim)

    mix = {k: float(v) for k, v in sim["recommend_candidate_mix"].items()}
    n_pref = int(round(n_cand * mix["preferred"] / (mix["preferred"] + mix["random"])))
    if not 0 <= n_pref <= n_cand:
        raise ValueError(f"simulate.recommend_candidate_mix.preferred gives {n_pref} slots out of {n_cand}")
    cdf = world.user_pref_cdf[req_user[r_idx]]
    slot_cat = np.minimum((cdf[:, None, :] < rng.random((len(r_idx), n_pref))[..., None]).sum(-1), n_cat - 1)
    cand[r_idx, :n_pref] = by_cat.draw(rng.random(slot_cat.shape), slot_cat)
    cand[r_idx, n_pref:] = all_items.draw(rng.random((len(r_idx), n_cand - n_pref)),
                                          np.zeros(len(r_idx), np.int64))

    # A candidate drawn twice counts once; the list can be no longer than the distinct candidates.
    cand = np.sort(cand, axis=1)
    valid = np.ones_like(cand, dtype=bool)
    valid[:, 1:] = cand[:, 1:] != cand[:, :-1]
    lengths = np.minimum(lengths, valid.sum(1))

    # True relevance in [0, 1]: a weighted mean of components that each lie in [0, 1].
    disc = np.where(rng.random(n_items) < float(sim["discount_share"]),
                    rng.uniform(*(float(v) for v in sim["discount_range"]), n_items), 0.0)
    shown_price = np.round(world.price * (1.0 - disc), 2)
    c_cat = world.cat[cand]
    pref_max = world.user_pref.max(1)
    pref = world.user_pref[req_user[:, None], c_cat] / pref_max[req_user][:, None]
    price_gap = (np.log(shown_price[cand]) - np.log(world.median_price[c_cat])
                 - world.user_price_z[req_user][:, None]) / float(sim["price_fit_width"])
    price_fit = np.exp(-0.5 * price_gap ** 2)
    match = pref.copy()  # recommendations: how much the user likes the item's category
    qw = sim["query_match_weights"]
    w_pt, w_cat, w_attr = (float(qw[k]) for k in ("product_type", "category", "attributes"))
    sc = cand[s_idx]
    pt_hit = (world.ptype[sc] == world.ptype[target][:, None]).astype(float)
    cat_hit = (world.cat[sc] == target_cat[:, None]).astype(float)
    named = q_brand.astype(np.int64) + q_colour + q_material
    attr_hits = ((q_brand[:, None] & (world.brand[sc] == world.brand[target][:, None])).astype(np.int64)
                 + (q_colour[:, None] & (world.colour[sc] == world.colour[target][:, None]))
                 + (q_material[:, None] & (world.material[sc] == world.material[target][:, None])))
    attr = np.where(named[:, None] > 0, attr_hits / np.maximum(named, 1)[:, None], pt_hit)
    match[s_idx] = (w_pt * pt_hit + w_cat * cat_hit + w_attr * attr) / (w_pt + w_cat + w_attr)
    rw = sim["relevance_weights"]
    comps = {"match": match, "preference": pref, "price": price_fit, "quality": world.quality[cand]}
    w_total = sum(float(rw[k]) for k in comps)
    relevance = np.clip(sum(float(rw[k]) * v for k, v in comps.items()) / w_total, 0.0, 1.0)

    rank, rank_prop = plackett_luce(rng, float(sim["ranker_score_scale"]) * relevance, valid, beta, l_hi)
    shown = np.arange(l_hi)[None, :] < lengths[:, None]
    req_of_row, col_of_row = np.nonzero(shown)
    item_of_row = np.take_along_axis(cand, rank, 1)[shown]
    rel_of_row = np.take_along_axis(relevance, rank, 1)[shown]
    propensity = rank_prop[shown]
    position = col_of_row + 1
    n_rows = len(item_of_row)

    # Position-based click model, then purchases, then noise (recorded in the truth file only).
    u = rng.random((6, n_rows))
    examined = u[0] < position.astype(float) ** -float(sim["examination_decay"])
    attractive = u[1] < _sigmoid(float(sim["attractiveness_slope"]) * rel_of_row + float(sim["attractiveness_bias"]))
    real_click = examined & attractive
    real_buy = real_click & (u[2] < _sigmoid(float(sim["purchase_slope"]) * rel_of_row + float(sim["purchase_bias"])))
    bot = session_bot[req_session[req_of_row]]
    accidental = ~bot & ~real_click & (u[3] < float(sim["accidental_click_rate"]))
    missed = ~bot & real_click & (u[4] < float(sim["missed_click_rate"]))
    bot_click = bot & (u[5] < float(sim["bot_click_rate"]))
    clicked = np.where(bot, bot_click, (real_click & ~missed) | accidental)
    purchased = ~bot & real_buy & ~missed
    kind = np.zeros(n_rows, np.int64)
    kind[bot], kind[accidental], kind[missed] = 1, 2, 3

    row_session = req_session[req_of_row]
    row_user = req_user[req_of_row]
    req_query = np.full(n_req, None, dtype=object)
    req_query[s_idx] = queries
    tenure = np.maximum(world.user_signup_days_ago + (day_date - _as_date(sim["users_as_of"])).days, 0)
    event_ids = np.array([f"e{tag}-{k:07d}" for k in range(1, n_rows + 1)], dtype=object)
    impressions = pa.Table.from_pandas(pd.DataFrame({
        "event_id": event_ids,
        "ts": pd.to_datetime(day_start_us + ts_us[req_of_row], unit="us", utc=True),
        "request_id": _ids(f"r{tag}-", n_req, 6)[req_of_row],
        "user_id": world.user_ids[row_user],
        "session_id": _ids(f"s{tag}-", n_sessions, 6)[session_rank[row_session]],
        "surface": np.where(is_search, "search", "recommend").astype(object)[req_of_row],
        "query": req_query[req_of_row],
        "item_id": world.item_ids[item_of_row],
        "position": position.astype(np.int64),
        "clicked": clicked.astype(np.int64),
        "purchased": purchased.astype(np.int64),
        "propensity": propensity,
        "price": shown_price[item_of_row],
        "f_device": np.array(DEVICES, dtype=object)[session_device[row_session]],
        "f_user_tenure_days": tenure[row_user].astype(np.int64),
    }), schema=SIM_IMPRESSION_SCHEMA, preserve_index=False).replace_schema_metadata(None)
    truth = pa.Table.from_pandas(pd.DataFrame({
        "event_id": event_ids,
        "is_noise": kind > 0,
        "noise_kind": np.array(NOISE_KINDS, dtype=object)[kind],
        "relevance": rel_of_row,
    }), schema=TRUTH_SCHEMA, preserve_index=False).replace_schema_metadata(None)
    stats = {"rows": n_rows, "requests": n_req, "sessions": n_sessions,
             "ctr": float(clicked.mean()), "purchase_rate": float(purchased.mean()),
             "noise_share": float((kind > 0).mean())}
    return impressions, truth, stats


def _write_in_own_dir(path: Path, table: pa.Table) -> None:
    """Replace the folder holding `path` whole, with `table` as its only file."""
    with atomic_dir(path.parent) as tmp:
        pq.write_table(table, tmp / path.name)


def run(start: str, days: int, out: Path, params: dict,
        log: Callable[[str], None] | None = None) -> dict:
    """Simulate `days` days from `start` into `out`; each day's folders are replaced whole."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    first = dt.date.fromisoformat(start)
    out = Path(out)
    world = build_world(params)
    summary: dict = {"days": [], "rows": {}}
    for k in range(days):
        t0 = time.perf_counter()
        day = (first + dt.timedelta(days=k)).isoformat()
        impressions, truth, stats = simulate_day(day, world, params)
        paths = DayPaths(out, day)
        _write_in_own_dir(paths.catalog_file, world.catalog)
        _write_in_own_dir(paths.truth_file, truth)
        # Impressions last: a day with impressions on disk has its catalog and truth beside it.
        _write_in_own_dir(paths.impressions_dir / IMPRESSION_FILE, impressions)
        summary["days"].append(day)
        summary["rows"][day] = stats["rows"]
        if log is not None:
            log(f"simulate {day}: {stats['rows']} impressions, {stats['requests']} requests, "
                f"{stats['sessions']} sessions, CTR {stats['ctr']:.3f}, purchases {stats['purchase_rate']:.4f}, "
                f"noise {stats['noise_share']:.3f}, {time.perf_counter() - t0:.1f}s -> {out}")
    return summary


def _day_arg(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {value!r}") from exc


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, type=_day_arg, help="first day, YYYY-MM-DD")
    parser.add_argument("--days", type=_positive_int, default=1, help="number of days (default 1)")
    parser.add_argument("--out", type=Path, default=Path("data/raw"), help="output root (default data/raw)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--impressions-per-day", type=_positive_int, default=None,
                        help="override simulate.impressions_per_day")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if args.impressions_per_day is not None:
        params = copy.deepcopy(params)
        params["simulate"]["impressions_per_day"] = args.impressions_per_day
    run(args.start, args.days, args.out, params, log=print)
    return 0
