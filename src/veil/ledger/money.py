"""Money as integers: every amount Veil stores is a whole number of *units*, 10⁻¹² of the
currency (a pico-dollar when the currency is USD).

Prices are given per million tokens with at most six decimals, so one token costs a whole
number of units and a request's charge is exact: ``tokens × units_per_token``. Only revenue
shares need rounding (20 % of an odd amount); they round half to even, once per ledger line,
and each line is posted with its counter-line, so the ledger balances by construction.

Floats never touch money: config values are read as ``Decimal`` (a YAML ``0.15`` becomes
``Decimal("0.15")``, not ``0.1499999…``) and turned into units here.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

#: Units per whole currency unit.
UNIT = 10**12
#: Decimals a price per million tokens may have (so that one token is a whole unit).
PRICE_DECIMALS = 6
#: Decimals a revenue-share percentage may have.
PERCENT_DECIMALS = 4
_PERCENT_SCALE = 10**PERCENT_DECIMALS * 100  # percent with 4 decimals, as a fraction


def to_decimal(value: Any, decimals: int, what: str) -> Decimal:
    """A config number as an exact ``Decimal`` with at most ``decimals`` places, ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{what} must be a number")
    try:
        # str() of a float is its shortest round-trip form: 0.15 → "0.15".
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{what} must be a number") from None
    if not number.is_finite():
        raise ValueError(f"{what} must be a finite number")
    if number < 0:
        raise ValueError(f"{what} must not be negative")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -decimals and number != number.quantize(Decimal(1).scaleb(-decimals)):
        raise ValueError(f"{what} may have at most {decimals} decimals")
    return number


def per_token(price_per_million: Decimal) -> int:
    """Units one token costs at a price per million tokens."""
    units = price_per_million * UNIT / 1_000_000
    assert units == units.to_integral_value(), "prices are validated to six decimals"
    return int(units)


def units(amount: Decimal) -> int:
    """A currency amount (e.g. a budget of ``12.50``) in units, exact."""
    scaled = amount * UNIT
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than 12 decimals")
    return int(scaled)


def share(base: int, percent: Decimal) -> int:
    """``percent`` % of ``base`` units, rounded half to even to a whole unit."""
    scaled = int(percent * 10**PERCENT_DECIMALS)  # exact: validated to four decimals
    quotient, remainder = divmod(base * scaled, _PERCENT_SCALE)
    quotient = int(quotient)
    twice = 2 * remainder
    if twice > _PERCENT_SCALE or (twice == _PERCENT_SCALE and quotient % 2):
        quotient += 1
    return quotient


def to_amount(value: int) -> Decimal:
    """Units back to a currency amount, exact."""
    return Decimal(value).scaleb(-12)


def format_amount(value: int, places: int = 2) -> str:
    """Units as a decimal string, all significant digits, at least ``places`` decimals:
    ``150_000_000`` → ``"0.00015"``; ``12 * UNIT`` → ``"12.00"``."""
    amount = to_amount(value)
    text = f"{amount:f}"
    if "." in text:
        text = text.rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(places, '0')}"


def round_half_even(amount: Decimal, places: int = 2) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
