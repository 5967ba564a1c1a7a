"""The hardware, price and grid-carbon catalog: data files with source and date, and loaders.

>>> from kilowatt.catalog import load_catalog
>>> catalog = load_catalog()
>>> catalog.instance("p4d.24xlarge").accelerator
'a100-40gb'
"""

from kilowatt.catalog.loader import BUILTIN_FILES, DEFAULT_PUE, Catalog, load_catalog
from kilowatt.catalog.models import (
    PRECISIONS,
    Accelerator,
    Instance,
    Precision,
    PurchaseOption,
    Region,
)
from kilowatt.catalog.runs import PublishedLayout, PublishedRun, load_published_runs

__all__ = [
    "BUILTIN_FILES",
    "DEFAULT_PUE",
    "PRECISIONS",
    "Accelerator",
    "Catalog",
    "Instance",
    "Precision",
    "PublishedLayout",
    "PublishedRun",
    "PurchaseOption",
    "Region",
    "load_catalog",
    "load_published_runs",
]
