"""Latitude/longitude → the grid of the Korea Meteorological Administration (KMA).

The short-term forecast API (``getVilageFcst``) takes a grid cell (``nx``, ``ny``) of a 5 km
Lambert conformal conic grid, not coordinates. This is KMA's published conversion (the
"LCC DFS" code in the API's guide), with its standard constants.

    >>> latlon_to_grid(37.5665, 126.9780)   # Seoul City Hall
    (60, 127)
"""

from __future__ import annotations

import math

__all__ = ["GRID_X_MAX", "GRID_Y_MAX", "grid_to_latlon", "latlon_to_grid"]

RE = 6371.00877  # Earth radius (km)
GRID = 5.0  # grid spacing (km)
SLAT1 = 30.0  # standard parallel 1 (degrees)
SLAT2 = 60.0  # standard parallel 2 (degrees)
OLON = 126.0  # reference longitude (degrees)
OLAT = 38.0  # reference latitude (degrees)
XO = 43  # grid x of the reference point
YO = 136  # grid y of the reference point
GRID_X_MAX = 149  # the forecast grid is 149 x 253 cells, numbered from 1
GRID_Y_MAX = 253

_DEGRAD = math.pi / 180.0


def _projection() -> tuple[float, float, float, float]:
    re = RE / GRID
    slat1, slat2 = SLAT1 * _DEGRAD, SLAT2 * _DEGRAD
    olat = OLAT * _DEGRAD
    sn = math.tan(math.pi * 0.25 + slat2 * 0.5) / math.tan(math.pi * 0.25 + slat1 * 0.5)
    sn = math.log(math.cos(slat1) / math.cos(slat2)) / math.log(sn)
    sf = math.tan(math.pi * 0.25 + slat1 * 0.5)
    sf = math.pow(sf, sn) * math.cos(slat1) / sn
    ro = math.tan(math.pi * 0.25 + olat * 0.5)
    ro = re * sf / math.pow(ro, sn)
    return re, sn, sf, ro


_RE, _SN, _SF, _RO = _projection()


def latlon_to_grid(lat: float, lon: float) -> tuple[int, int]:
    """The KMA forecast grid cell (nx, ny) containing ``lat``, ``lon`` (WGS84 degrees).

    Raises ValueError for a point outside the grid (KMA covers the Korean peninsula and
    its seas; a farm outside it needs another weather provider).
    """
    if not (-90.0 < lat < 90.0) or not (-180.0 <= lon <= 180.0):
        raise ValueError(f"invalid coordinates lat={lat}, lon={lon}")
    ra = math.tan(math.pi * 0.25 + lat * _DEGRAD * 0.5)
    ra = _RE * _SF / math.pow(ra, _SN)
    theta = lon * _DEGRAD - OLON * _DEGRAD
    if theta > math.pi:
        theta -= 2.0 * math.pi
    if theta < -math.pi:
        theta += 2.0 * math.pi
    theta *= _SN
    nx = math.floor(ra * math.sin(theta) + XO + 0.5)
    ny = math.floor(_RO - ra * math.cos(theta) + YO + 0.5)
    if not (1 <= nx <= GRID_X_MAX and 1 <= ny <= GRID_Y_MAX):
        raise ValueError(
            f"lat={lat}, lon={lon} is outside the KMA forecast grid (got nx={nx}, ny={ny}); "
            "use the Open-Meteo provider for farms outside Korea"
        )
    return nx, ny


def grid_to_latlon(nx: int, ny: int) -> tuple[float, float]:
    """The coordinates (lat, lon) of the centre of grid cell (nx, ny): the inverse."""
    xn = nx - XO
    yn = _RO - ny + YO
    ra = math.copysign(math.sqrt(xn * xn + yn * yn), _SN)
    alat = math.pow(_RE * _SF / ra, 1.0 / _SN)
    alat = 2.0 * math.atan(alat) - math.pi * 0.5
    if abs(xn) <= 0.0:
        theta = 0.0
    elif abs(yn) <= 0.0:
        theta = math.pi * 0.5 * (1 if xn > 0 else -1)
    else:
        theta = math.atan2(xn, yn)
    alon = theta / _SN + OLON * _DEGRAD
    return alat / _DEGRAD, alon / _DEGRAD
