"""The simulated catalog: a fixed set of categories, each with its title template and vocabulary, and
the items drawn from them with distinct titles, shelf prices and a hidden quality. It comes from the
root seed alone (its own random stream), so every simulated day shares the same catalog; the global
product-type, brand, colour and material codes it records are what search matching compares.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.data.contract import CATALOG_SCHEMA
from pipeline.params import stage_seed


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
class Catalog:
    """The catalog table and the per-item codes behind it."""
    table: pa.Table
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


def _vocab(values) -> tuple[list[str], dict[str, int]]:
    """Distinct values in first-seen order, and each one's code."""
    names: list[str] = []
    index: dict[str, int] = {}
    for value in values:
        if value not in index:
            index[value] = len(names)
            names.append(value)
    return names, index


def ids(prefix: str, n: int, width: int) -> np.ndarray:
    """Zero-padded ids prefix0000..., one per index."""
    return np.array([f"{prefix}{k:0{width}d}" for k in range(n)], dtype=object)


def build_catalog(params: dict) -> Catalog:
    """The items, titles and prices, derived from the root seed only."""
    sim = params["simulate"]
    n_items = int(sim["n_items"])
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

    item_ids = ids("i", n_items, max(6, len(str(n_items - 1))))
    catalog = pa.Table.from_pandas(pd.DataFrame({
        "item_id": item_ids,
        "title": np.array(titles, dtype=object),
        "category": np.array([CATEGORIES[k].path for k in cat], dtype=object),
        "brand": np.array([brand_names[b].split("|", 1)[1] for b in brand], dtype=object),
        "price": price,
    }), schema=CATALOG_SCHEMA, preserve_index=False).replace_schema_metadata(None)

    return Catalog(
        table=catalog, item_ids=item_ids, cat=cat, ptype=ptype, brand=brand, colour=colour,
        material=material, price=price, quality=quality,
        ptype_names=[p.split("|", 1)[1] for p in ptype_names],
        brand_names=[b.split("|", 1)[1] for b in brand_names],
        colour_names=colour_names, material_names=material_names, median_price=median,
    )
