"""Synthetic room-occupancy sensor data for the demo's training project (stdlib only).

Each row is one reading of a room's sensors, in the columns of the UCI occupancy data set:
temperature (°C), relative humidity (%), light (lux), CO2 (ppm), humidity ratio (kg water per
kg dry air, derived from temperature and humidity) and whether someone was in the room.

People, when present, switch the lamps on, breathe CO2 and warm the room; daylight through
the window brightens and warms it whether anyone is there or not. The label is a noisy
function of light, CO2 and temperature, so a small classifier scores about 0.96 accuracy
and never 1.0. The same seed always gives the same file, byte for byte.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("temperature", "humidity", "light", "co2", "humidity_ratio", "occupied")
"""The CSV header, in order; `occupied` (0 or 1) is the label."""

RANGES = {
    "temperature": (19.0, 24.0),
    "humidity": (16.0, 40.0),
    "light": (0.0, 1600.0),
    "co2": (400.0, 2000.0),
}
"""The interval each measured column is clipped to."""

PRESENT = 0.45
"""How often people are in the room; the label follows them closely, so classes are ~45/55."""
LABEL_NOISE = 0.8
"""Spread of the noise added to the occupancy score (in units of the score); larger is harder."""


@dataclass(frozen=True)
class Reading:
    """One row of a batch, rounded as it is written."""

    temperature: float
    humidity: float
    light: float
    co2: float
    humidity_ratio: float
    occupied: int

    def row(self) -> tuple[str, ...]:
        return (
            f"{self.temperature:.2f}",
            f"{self.humidity:.2f}",
            f"{self.light:.1f}",
            f"{self.co2:.1f}",
            f"{self.humidity_ratio:.6f}",
            str(self.occupied),
        )


def humidity_ratio(temperature: float, humidity: float) -> float:
    """Mass of water vapour per mass of dry air at sea-level pressure (Magnus formula)."""
    vapour_hpa = humidity / 100 * 6.112 * math.exp(17.62 * temperature / (243.12 + temperature))
    return 0.622 * vapour_hpa / (1013.25 - vapour_hpa)


def _clip(value: float, column: str) -> float:
    low, high = RANGES[column]
    return min(high, max(low, value))


def reading(rng: random.Random) -> Reading:
    """One reading; consumes a fixed number of draws from `rng` whatever the outcome."""
    present = rng.random() < PRESENT
    daytime = rng.random() < 0.6
    lamps_on = rng.random() < 0.9
    day, night = rng.triangular(20, 1000, 250), rng.uniform(0, 15)
    lamp = rng.uniform(380, 560)
    busy, idle = rng.uniform(250, 1300), rng.uniform(0, 300)
    sun = day if daytime else night
    lamps = lamp if present and lamps_on else 0.0
    people = busy if present else idle
    light = _clip(round(sun + lamps + rng.gauss(0, 10), 1), "light")
    co2 = _clip(round(430 + people + rng.gauss(0, 40), 1), "co2")
    warmth = (1.6 if present else 0.0) + sun / 1000 * 1.2
    temperature = _clip(round(19.8 + warmth + rng.gauss(0, 0.45), 2), "temperature")
    humidity = _clip(round(rng.gauss(26, 4.5) + (2.0 if present else 0.0), 2), "humidity")
    # The label: lamps on, CO2 up and a warmer room all point to people; the noise stands
    # for what sensors miss (someone reading by the window, a door left open).
    score = (
        (light - 450) / 120
        + (co2 - 700) / 180
        + (temperature - 21.0) / 1.2
        + rng.gauss(0, LABEL_NOISE)
    )
    return Reading(
        temperature=temperature,
        humidity=humidity,
        light=light,
        co2=co2,
        humidity_ratio=round(humidity_ratio(temperature, humidity), 6),
        occupied=int(score > 0),
    )


def readings(*, rows: int, seed: int) -> list[Reading]:
    """`rows` readings, the same for the same seed on every platform and Python version."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    return [reading(rng) for _ in range(rows)]


def write_batch(directory: Path, *, rows: int, seed: int, name: str) -> Path:
    """Write `rows` readings to `directory/name` (`.csv` added if missing); return the path.

    The folder is created if needed and an existing file of that name is replaced.
    """
    filename = name if name.endswith(".csv") else f"{name}.csv"
    if not filename.removesuffix(".csv") or Path(filename).name != filename:
        raise ValueError(f"batch name {name!r} must be a plain file name")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(r.row() for r in readings(rows=rows, seed=seed))
    return path
