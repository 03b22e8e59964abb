"""The dashboard's edge view: what each edge and shield says on its /metrics, summed up.

Scraped when the page asks (at most every couple of seconds per viewer), with a
short timeout, so a dead edge shows as unreachable rather than stalling the page.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gslb.probe import describe_error

HIT_RESULTS = frozenset({"HIT", "STALE", "REVALIDATED"})
SCRAPE_TIMEOUT = 1.5


def summarise(text: str) -> dict[str, Any]:
    """Per customer: requests by cache result, hit ratio, bytes served and pulled, errors."""
    customers: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    shields: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels, value = sample.labels, sample.value
            c = customers[labels.get("customer", "")] if "customer" in labels else None
            if sample.name == "edge_cache_requests_total" and c is not None:
                c["hits" if labels["result"] in HIT_RESULTS else "misses"] += value
            elif sample.name == "edge_bytes_to_clients_total" and c is not None:
                c["bytes_served"] += value
            elif sample.name == "edge_bytes_from_origin_total" and c is not None:
                c["bytes_from_origin"] += value
            elif sample.name == "edge_origin_errors_total" and c is not None:
                c["origin_errors"] += value
            elif sample.name == "edge_shield_requests_total":
                shields[f"{labels['shield']} {labels['result']}"] += value
    out = {}
    for name, c in sorted(customers.items()):
        looked = c["hits"] + c["misses"]
        out[name] = {**{k: int(v) for k, v in c.items()},
                     "hit_ratio": round(c["hits"] / looked, 3) if looked else None}
    return {"customers": out, "shields": {k: int(v) for k, v in sorted(shields.items())}}


async def scrape(edges: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """One entry per configured edge: its summary, or why it could not be read."""
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def one(name: str, url: str) -> dict[str, Any]:
            try:
                async with session.get(url) as resp:
                    if resp.status != 200:
                        return {"name": name, "url": url, "error": f"HTTP {resp.status}"}
                    return {"name": name, "url": url, **summarise(await resp.text())}
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                return {"name": name, "url": url, "error": describe_error(exc)}
            except ValueError:
                return {"name": name, "url": url, "error": "not Prometheus text"}
        return list(await asyncio.gather(*(one(n, u) for n, u in edges)))
