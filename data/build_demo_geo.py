"""Build a GeoIP2-City format database from a small CSV of networks.

    python data/build_demo_geo.py [CSV] [OUT.mmdb]

Defaults: data/demo-geo.csv -> data/demo-city.mmdb. The records carry the same
fields as MaxMind's City databases (city, country, continent, location), so
`geoip2.database.Reader.city()` reads the result exactly as it reads GeoLite2.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

HERE = Path(__file__).resolve().parent
CONTINENTS = {"AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe",
              "NA": "North America", "OC": "Oceania", "SA": "South America"}


def record(city: str, country: str, continent: str, lat: float, lon: float) -> dict:
    """One City-database record in MaxMind's layout."""
    return {
        "city": {"names": {"en": city}},
        "country": {"iso_code": country, "names": {"en": country}},
        "continent": {"code": continent, "names": {"en": CONTINENTS[continent]}},
        "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 50},
    }


def build(csv_path: Path, out_path: Path) -> int:
    """Write out_path from csv_path; returns the number of networks written."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City",
                        languages=["en"], description="gslb demo City database")
    count = 0
    with csv_path.open(newline="") as fh:
        rows = (line for line in fh if line.strip() and not line.startswith("#"))
        for net, city, country, continent, lat, lon in csv.reader(rows):
            writer.insert_network(IPSet([net]),
                                  record(city, country, continent, float(lat), float(lon)))
            count += 1
    tmp = out_path.with_suffix(".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(out_path)
    return count


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "demo-geo.csv"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "demo-city.mmdb"
    print(f"{build(src, dst)} networks -> {dst}")
