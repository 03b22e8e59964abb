"""Strict parsers for the HTTP field values caching depends on.

A cache that guesses at a malformed value stores what it should not (or for
longer than it should), so these follow the grammars: HTTP-date in its three
forms only (RFC 9110 5.6.7), delta-seconds (RFC 9111 1.2.2), Cache-Control
directives with quoted arguments (RFC 9111 5.2), and the Structured Field
dictionaries of targeted cache fields such as CDN-Cache-Control (RFC 9213,
RFC 8941 3.2). Anything else is None: the caller applies the RFC's rule for
an invalid value.
"""
from __future__ import annotations

import calendar
import re
import time

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                      "Sep", "Oct", "Nov", "Dec"), 1)}
_CLOCK = r"(\d\d):(\d\d):(\d\d)"
IMF = re.compile(rf"({'|'.join(DAYS)}), (\d\d) ([A-Z][a-z]{{2}}) (\d{{4}}) {_CLOCK} GMT")
RFC850 = re.compile(rf"({'|'.join(LONG_DAYS)}), (\d\d)-([A-Z][a-z]{{2}})-(\d\d) {_CLOCK} GMT")
ASCTIME = re.compile(rf"({'|'.join(DAYS)}) ([A-Z][a-z]{{2}}) ([ \d]\d) {_CLOCK} (\d{{4}})")


def http_date(value: str | None) -> float | None:
    """An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms) as a Unix
    time; None for anything else (another zone, a number, two dates, no weekday...)."""
    if not value:
        return None
    m = IMF.fullmatch(value)
    if m:
        day, month, year, hh, mm, ss = m.group(2), m.group(3), m.group(4), *m.group(5, 6, 7)
    elif (m := RFC850.fullmatch(value)) is not None:
        day, month, yy, hh, mm, ss = m.group(2), m.group(3), m.group(4), *m.group(5, 6, 7)
        # RFC 9110 5.6.7: a two-digit year more than 50 years ahead is in the past.
        this_year = time.gmtime().tm_year
        year = str(this_year - this_year % 100 + int(yy))
        if int(year) > this_year + 50:
            year = str(int(year) - 100)
    elif (m := ASCTIME.fullmatch(value)) is not None:
        month, day, hh, mm, ss, year = m.group(2), m.group(3).strip(), *m.group(4, 5, 6, 7)
    else:
        return None
    if month not in MONTHS:
        return None
    fields = (int(year), MONTHS[month], int(day), int(hh), int(mm), int(ss))
    if not (1 <= fields[2] <= calendar.monthrange(fields[0], fields[1])[1]
            and fields[3] < 24 and fields[4] < 60 and fields[5] < 61):
        return None
    return float(calendar.timegm(fields + (0, 0, 0)))


def delta_seconds(value: str | None) -> int | None:
    """1*DIGIT (RFC 9111 1.2.2); huge values are capped, anything else is None."""
    if value is None or not value.isdigit() or not value.isascii():
        return None
    return min(int(value), 2**31)


TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
QUOTED = r'"(?:[^"\\]|\\.)*"'
DIRECTIVE = re.compile(rf"\s*({TOKEN})(?:\s*=\s*({TOKEN}|{QUOTED}))?\s*(?:,|$)")


def _unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value


def directives(values) -> dict[str, str | None]:
    """Cache-Control field lines -> {directive: argument or None}, names lower-cased,
    the first of a repeated directive kept; an unparsable part ends that line."""
    out: dict[str, str | None] = {}
    for value in values:
        pos = 0
        while pos < len(value):
            if value[pos] in " \t,":
                pos += 1
                continue
            m = DIRECTIVE.match(value, pos)
            if m is None:
                break
            name, arg = m.group(1).lower(), m.group(2)
            out.setdefault(name, _unquote(arg) if arg is not None else None)
            pos = m.end()
    return out


def field_names(argument: str | None) -> tuple[str, ...]:
    """The field names of a qualified no-cache="..." / private="..." (lower case)."""
    if not argument:
        return ()
    return tuple(n.strip().lower() for n in argument.split(",") if n.strip())


KEY = r"[a-z*][a-z0-9_\-.*]*"
BARE = rf"(?:-?\d{{1,15}}(?:\.\d{{1,3}})?|{QUOTED}|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*|\?[01])"
PARAMS = rf"(?:;\s*{KEY}(?:={BARE})?)*"
MEMBER = re.compile(rf"({KEY})(?:=({BARE}))?{PARAMS}")


SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def sf_dictionary(values) -> dict[str, str | None] | None:
    """An RFC 8941 Dictionary (the syntax of targeted cache fields, RFC 9213 2.1) as
    directives: {key: argument, or None for true}; None when it does not parse (the
    field is then ignored, RFC 9213 2.1) or is empty."""
    text = ", ".join(v.strip(" \t") for v in values if v and v.strip(" \t"))
    if not text:
        return None
    out: dict[str, str | None] = {}
    pos = 0
    while True:
        m = MEMBER.match(text, pos)
        if m is None:
            return None
        key, value = m.group(1), m.group(2)
        if value == "?0":
            out.pop(key, None)
        else:
            out[key] = None if value in (None, "?1") else _unquote(value)
        pos = m.end()
        if pos == len(text):
            return out or None
        sep = SEPARATOR.match(text, pos)
        if sep is None or sep.end() == len(text):
            return None
        pos = sep.end()
