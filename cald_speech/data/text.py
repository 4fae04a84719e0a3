"""Text normalisation to the style of LibriSpeech transcripts.

LibriSpeech transcripts are upper-case words separated by single spaces; the only
punctuation kept is the apostrophe inside or at the end of a word (``DON'T``,
``JOHN'S``, ``DEBTORS'``). Everything a reader would say aloud is spelled out: numbers,
ordinals, years, amounts of money, times, percentages and abbreviations.
:func:`normalize_text` turns free text (e.g. LJ Speech or SLURP sentences) into that
form; the output only ever contains ``A-Z``, ``'`` and single spaces, and normalising
twice changes nothing.

Example
-------
>>> normalize_text("Mr. Smith paid $5 on the 21st of June, 1863, at 10:30 a.m.")
'MISTER SMITH PAID FIVE DOLLARS ON THE TWENTY FIRST OF JUNE EIGHTEEN SIXTY THREE AT TEN THIRTY A M'
>>> normalize_text("The debtors' side -- \\"only\\" 3.5% of it -- was half-way full.")
"THE DEBTORS' SIDE ONLY THREE POINT FIVE PERCENT OF IT WAS HALF WAY FULL"
"""

import re
import unicodedata

__all__ = [
    "normalize_text",
    "number_to_words",
    "ordinal_to_words",
    "year_to_words",
    "roman_to_int",
]

_ONES = (
    "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN "
    "FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN"
).split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = (
    (10**18, "QUINTILLION"),
    (10**15, "QUADRILLION"),
    (10**12, "TRILLION"),
    (10**9, "BILLION"),
    (10**6, "MILLION"),
    (10**3, "THOUSAND"),
)
_ORDINAL_IRREGULAR = {
    "ONE": "FIRST",
    "TWO": "SECOND",
    "THREE": "THIRD",
    "FIVE": "FIFTH",
    "EIGHT": "EIGHTH",
    "NINE": "NINTH",
    "TWELVE": "TWELFTH",
}
# Numbers longer than this are read digit by digit (phone numbers, codes).
_MAX_CARDINAL = 10**21 - 1


def _below_thousand(n):
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "HUNDRED"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest or not words:
        words.append(_ONES[rest])
    return words


def number_to_words(n):
    """Spells out an integer the way LibriSpeech transcripts do (no "AND").

    Arguments
    ---------
    n : int
        Any integer; negatives get ``MINUS``. Numbers of 22 digits or more are read
        digit by digit.

    Returns
    -------
    str
        Upper-case words separated by single spaces.

    Example
    -------
    >>> number_to_words(0)
    'ZERO'
    >>> number_to_words(199)
    'ONE HUNDRED NINETY NINE'
    >>> number_to_words(6439)
    'SIX THOUSAND FOUR HUNDRED THIRTY NINE'
    >>> number_to_words(-2000005)
    'MINUS TWO MILLION FIVE'
    """
    n = int(n)
    if n < 0:
        return "MINUS " + number_to_words(-n)
    if n > _MAX_CARDINAL:
        return " ".join(_ONES[int(d)] for d in str(n))
    if n < 1000:
        return " ".join(_below_thousand(n))
    words = []
    for value, name in _SCALES:
        if n >= value:
            count, n = divmod(n, value)
            words += _below_thousand(count) + [name]
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def ordinal_to_words(n):
    """Spells out an ordinal number.

    Arguments
    ---------
    n : int
        A non-negative integer.

    Returns
    -------
    str
        e.g. ``TWENTY FIRST`` for 21.

    Example
    -------
    >>> [ordinal_to_words(n) for n in (1, 2, 3, 12, 21, 40, 100)]
    ['FIRST', 'SECOND', 'THIRD', 'TWELFTH', 'TWENTY FIRST', 'FORTIETH', 'ONE HUNDREDTH']
    """
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return " ".join(words[:-1] + [last])


def year_to_words(n):
    """Spells out a year the way it is read aloud.

    Arguments
    ---------
    n : int
        The year. 1100–1999 and 2100–9999 are read in pairs of digits; 2000–2009 as
        ``TWO THOUSAND ...``, 2010–2099 as ``TWENTY ...``; other numbers as cardinals.

    Returns
    -------
    str
        Upper-case words.

    Example
    -------
    >>> [year_to_words(y) for y in (1863, 1900, 1905, 2005, 2019)]
    ['EIGHTEEN SIXTY THREE', 'NINETEEN HUNDRED', 'NINETEEN OH FIVE', 'TWO THOUSAND FIVE', \
'TWENTY NINETEEN']
    """
    n = int(n)
    if n < 1100 or n > 9999 or n % 1000 == 0 or 2000 <= n < 2010:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if 2000 <= n < 2100:
        high, low = 20, n - 2000
    if low == 0:
        return number_to_words(high) + " HUNDRED"
    if low < 10:
        return number_to_words(high) + " OH " + _ONES[low]
    return number_to_words(high) + " " + number_to_words(low)


_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
_ROMAN_RE = re.compile(r"^M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})$")


def roman_to_int(s):
    """Value of a well-formed upper-case roman numeral, or ``None``.

    Example
    -------
    >>> roman_to_int("XIV"), roman_to_int("MCMLX"), roman_to_int("IIII"), roman_to_int("LL")
    (14, 1960, None, None)
    """
    if not s or not _ROMAN_RE.match(s):
        return None
    total = 0
    for i, ch in enumerate(s):
        value = _ROMAN_VALUES[ch]
        if i + 1 < len(s) and _ROMAN_VALUES[s[i + 1]] > value:
            total -= value
        else:
            total += value
    return total


# --------------------------------------------------------------------------- #
# Abbreviations. Each is matched with its full stop, as a whole word, in the case
# shown and in upper case ("Mr." and "MR.").
_ABBREVIATIONS = {
    "Mr": "MISTER",
    "Mrs": "MISSUS",
    "Ms": "MIZ",
    "Messrs": "MESSIEURS",
    "Mme": "MADAME",
    "Dr": "DOCTOR",
    "Drs": "DOCTORS",
    "Prof": "PROFESSOR",
    "Rev": "REVEREND",
    "Hon": "HONORABLE",
    "Esq": "ESQUIRE",
    "Jr": "JUNIOR",
    "Sr": "SENIOR",
    "Gen": "GENERAL",
    "Capt": "CAPTAIN",
    "Lt": "LIEUTENANT",
    "Col": "COLONEL",
    "Maj": "MAJOR",
    "Sgt": "SERGEANT",
    "Cpl": "CORPORAL",
    "Pvt": "PRIVATE",
    "Adm": "ADMIRAL",
    "Cmdr": "COMMANDER",
    "Gov": "GOVERNOR",
    "Sen": "SENATOR",
    "Rep": "REPRESENTATIVE",
    "Supt": "SUPERINTENDENT",
    "Insp": "INSPECTOR",
    "Det": "DETECTIVE",
    "Co": "COMPANY",
    "Bros": "BROTHERS",
    "Ltd": "LIMITED",
    "Inc": "INCORPORATED",
    "Corp": "CORPORATION",
    "Dept": "DEPARTMENT",
    "Mt": "MOUNT",
    "Ft": "FORT",
    "Ave": "AVENUE",
    "Blvd": "BOULEVARD",
    "Rd": "ROAD",
    "Vol": "VOLUME",
    "Vols": "VOLUMES",
    "Chap": "CHAPTER",
    "Fig": "FIGURE",
    "Jan": "JANUARY",
    "Feb": "FEBRUARY",
    "Aug": "AUGUST",
    "Sept": "SEPTEMBER",
    "Oct": "OCTOBER",
    "Nov": "NOVEMBER",
    "Dec": "DECEMBER",
}
# Lower-case abbreviations (matched in any case).
_ABBREVIATIONS_ANY_CASE = {"etc": "ET CETERA", "vs": "VERSUS"}


def _abbrev_pattern(table, flags=0):
    keys = sorted(table, key=len, reverse=True)
    alternatives = []
    for k in keys:
        alternatives.append(re.escape(k))
        if not flags and k.upper() != k:
            alternatives.append(re.escape(k.upper()))
    return re.compile(r"\b(" + "|".join(alternatives) + r")\.", flags)


_ABBREV_RE = _abbrev_pattern(_ABBREVIATIONS)
_ABBREV_ANY_RE = _abbrev_pattern(_ABBREVIATIONS_ANY_CASE, re.IGNORECASE)
_ABBREV_LOOKUP = {**{k.upper(): v for k, v in _ABBREVIATIONS.items()}}
# "No. 5", "Nos. 3 and 4", "No 12" -> NUMBER; "No." alone stays the word NO.
_NUMBER_ABBREV_RE = re.compile(r"\b(No|NO|no|Nos|NOS|nos)\.\s*(?=#?\d)")
_HASH_NUMBER_RE = re.compile(r"#\s*(?=\d)")
# "St. Paul" -> SAINT; "Jermyn St." -> STREET.
_SAINT_RE = re.compile(r"\b(?:St\.?|ST\.)\s+(?=[A-Z])")
_STREET_RE = re.compile(r"\b(?:St|ST)\.")
# British style, without the stop: "Mr Smith", "Dr Paul C. Peters".
_TITLE_NO_STOP_RE = re.compile(r"\b(Mr|Mrs|Ms|Dr)(?=\s+[A-Z][a-z])")
_AM_PM_RE = re.compile(r"\b([ap])\.\s?m\b\.?", re.IGNORECASE)
_AM_PM_AFTER_DIGIT_RE = re.compile(r"(\d)\s*([ap])\.?m\b\.?", re.IGNORECASE)
# Acronyms written with full stops: U.S.A., LL.D., e.g., i.e.
_DOTTED_ACRONYM_RE = re.compile(r"\b(?:[A-Za-z]{1,2}\.){2,}")

# Roman numerals: cardinal after these words, ordinal ("THE ...") after a name.
_ROMAN_CARDINAL_CONTEXT = (
    "chapter book part volume vol section act scene canto psalm article title appendix "
    "plate figure class type war phase stage level grade series"
).split()
_ROMAN_CARDINAL_RE = re.compile(
    r"\b(" + "|".join(_ROMAN_CARDINAL_CONTEXT) + r")\.?\s+(?-i:([IVXLCDM]+))\b", re.IGNORECASE
)
_ROMAN_REGNAL_RE = re.compile(r"\b([A-Z][a-z]+)\s+([IVX]{2,})\b(?!\.\w)")
_ROMAN_REGNAL_STOP = set(
    "the in of and or to for at by on with from as is was be a an i".split()
)

# --------------------------------------------------------------------------- #
# Numbers.
_CURRENCIES = {
    "$": ("DOLLAR", "DOLLARS", "CENT", "CENTS"),
    "£": ("POUND", "POUNDS", "PENNY", "PENCE"),
    "€": ("EURO", "EUROS", "CENT", "CENTS"),
    "¥": ("YEN", "YEN", None, None),
}
_SCALE_WORDS = r"thousand|million|billion|trillion"
_CURRENCY_RE = re.compile(
    r"([$£€¥])\s?(\d[\d,]*(?:\.\d+)?)(?:\s+(" + _SCALE_WORDS + r")\b)?", re.IGNORECASE
)
_PERCENT_RE = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?(%|per\s?cent\b)", re.IGNORECASE)
_TIME_RE = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b(?!:)")
_ORDINAL_RE = re.compile(r"\b(\d[\d,]*)(st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"\b(1[1-9]\d0|20\d0)'?s\b")
_FRACTION_RE = re.compile(r"(?<![\d/])(\d+)/(\d+)(?![\d/])")
_RANGE_RE = re.compile(r"(\d)\s?[-–]\s?(?=\d)")
_THOUSANDS_RE = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_DECIMAL_RE = re.compile(r"(\d*)\.(\d+)")
_NEGATIVE_RE = re.compile(r"(?<![\w.])[-−](?=\d)")
_INTEGER_RE = re.compile(r"\d+")
_ANY_DIGIT_RE = re.compile(r"\d")
_LETTER_DIGIT_RE = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")

_SYMBOLS = {"&": " AND ", "@": " AT ", "+": " PLUS ", "=": " EQUALS ", "%": " PERCENT "}
_UNICODE_MAP = str.maketrans(
    {
        "’": "'",
        "‘": "'",
        "ʼ": "'",
        "`": "'",
        "´": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "–": "-",
        "—": " ",
        "―": " ",
        "‐": "-",
        "‑": "-",
        "−": "-",
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ø": "o",
        "Ø": "O",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "Ð": "D",
        "þ": "th",
        "Þ": "TH",
        "ı": "i",
    }
)
# Words that keep a leading apostrophe ('EM, 'TIS ...).
_LEADING_APOSTROPHE_WORDS = {"'EM", "'TIS", "'TWAS", "'TWERE", "'TWILL", "'TWOULD", "'TWIXT"}


def _cardinal_text(digits):
    digits = digits.replace(",", "")
    if len(digits) > 1 and digits.startswith("0"):
        return " ".join(_ONES[int(d)] for d in digits)
    return number_to_words(int(digits))


def _decimal_text(whole, frac):
    head = _cardinal_text(whole) + " " if whole else ""
    return head + "POINT " + " ".join(_ONES[int(d)] for d in frac)


def _amount_text(number):
    """A number as it may appear in an amount: integer or decimal, with commas."""
    number = number.replace(",", "")
    if "." in number:
        whole, frac = number.split(".", 1)
        return _decimal_text(whole, frac)
    return _cardinal_text(number)


def _currency(m):
    symbol, number, scale = m.group(1), m.group(2).rstrip(","), m.group(3)
    one, many, sub_one, sub_many = _CURRENCIES[symbol]
    plain = number.replace(",", "")
    if scale:
        return f" {_amount_text(plain)} {scale.upper()} {many} "
    whole, _, frac = plain.partition(".")
    units = int(whole) if whole else 0
    if frac and sub_one and len(frac) == 2:
        cents = int(frac)
        parts = []
        if units or not cents:
            parts.append(f"{number_to_words(units)} {one if units == 1 else many}")
        if cents:
            parts.append(f"{number_to_words(cents)} {sub_one if cents == 1 else sub_many}")
        return " " + " ".join(parts) + " "
    if frac:
        return f" {_amount_text(plain)} {many} "
    return f" {number_to_words(units)} {one if units == 1 else many} "


def _time(m):
    hour, minute = int(m.group(1)), int(m.group(2))
    if minute == 0:
        return f" {number_to_words(hour)} O'CLOCK "
    if minute < 10:
        return f" {number_to_words(hour)} OH {_ONES[minute]} "
    return f" {number_to_words(hour)} {number_to_words(minute)} "


def _time_before_am_pm(text):
    # "10:00 a.m." is TEN A M, not TEN O'CLOCK A M.
    return re.sub(
        r"\b([01]?\d|2[0-3]):00(?=\s*[ap]\.?\s?m\b)",
        lambda m: f" {number_to_words(int(m.group(1)))} ",
        text,
        flags=re.IGNORECASE,
    )


def _fraction(m):
    num, den = int(m.group(1)), int(m.group(2))
    if den == 0 or den > 100 or num > 1000:
        return f" {number_to_words(num)} OVER {number_to_words(den)} "
    if den == 1:
        return f" {number_to_words(num)} OVER ONE "
    if den == 2:
        name = "HALF" if num == 1 else "HALVES"
    elif den == 4:
        name = "QUARTER" if num == 1 else "QUARTERS"
    else:
        name = ordinal_to_words(den) + ("S" if num != 1 else "")
    return f" {number_to_words(num)} {name} "


def _decade(m):
    words = year_to_words(int(m.group(1)))
    if words.endswith("Y"):
        return " " + words[:-1] + "IES "
    return " " + words + "S "


def _integer(m):
    digits = m.group(0)
    if len(digits) == 4 and not digits.startswith("0"):
        value = int(digits)
        if 1100 <= value <= 2099:
            return f" {year_to_words(value)} "
    return f" {_cardinal_text(digits)} "


def _roman_cardinal(m):
    value = roman_to_int(m.group(2))
    word, numeral = m.group(1), m.group(2)
    # Left alone: all-caps text (it may be normalised already: "CHAPTER I HAVE"), a lone
    # "I" after a lower-case word (the pronoun: "the chapter I read") and lone letters
    # that are more likely grades or classes ("class C").
    if (
        value is None
        or word.isupper()
        or (numeral == "I" and not word[0].isupper())
        or numeral in ("C", "D", "L", "M")
    ):
        return m.group(0)
    return f"{word} {number_to_words(value)}"


def _roman_regnal(m):
    value = roman_to_int(m.group(2))
    name = m.group(1).lower()
    if value is None or name in _ROMAN_CARDINAL_CONTEXT or name in _ROMAN_REGNAL_STOP:
        return m.group(0)
    return f"{m.group(1)} THE {ordinal_to_words(value)}"


def _expand_abbreviations(text):
    text = _NUMBER_ABBREV_RE.sub(
        lambda m: " NUMBERS " if m.group(1).lower() == "nos" else " NUMBER ", text
    )
    text = _HASH_NUMBER_RE.sub(" NUMBER ", text)
    text = _AM_PM_RE.sub(lambda m: f" {m.group(1).upper()} M ", text)
    text = _SAINT_RE.sub("SAINT ", text)
    text = _STREET_RE.sub("STREET", text)
    text = _ABBREV_RE.sub(lambda m: _ABBREV_LOOKUP[m.group(1).upper()], text)
    text = _TITLE_NO_STOP_RE.sub(lambda m: _ABBREV_LOOKUP[m.group(1).upper()], text)
    text = _ABBREV_ANY_RE.sub(lambda m: _ABBREVIATIONS_ANY_CASE[m.group(1).lower()], text)
    return text


def _expand_numbers(text):
    text = _CURRENCY_RE.sub(_currency, text)
    text = _PERCENT_RE.sub(lambda m: f" {_amount_text(m.group(1))} PERCENT ", text)
    text = _AM_PM_AFTER_DIGIT_RE.sub(lambda m: f"{m.group(1)} {m.group(2).upper()} M ", text)
    text = _time_before_am_pm(text)
    text = _TIME_RE.sub(_time, text)
    text = _ORDINAL_RE.sub(lambda m: f" {ordinal_to_words(int(m.group(1).replace(',', '')))} ",
                           text)
    text = _DECADE_RE.sub(_decade, text)
    text = _FRACTION_RE.sub(_fraction, text)
    text = _RANGE_RE.sub(r"\1 TO ", text)
    text = _THOUSANDS_RE.sub(lambda m: f" {_cardinal_text(m.group(0))} ", text)
    text = _DECIMAL_RE.sub(lambda m: f" {_decimal_text(m.group(1), m.group(2))} ", text)
    text = _NEGATIVE_RE.sub(" MINUS ", text)
    text = _LETTER_DIGIT_RE.sub(" ", text)
    return _INTEGER_RE.sub(_integer, text)


def _clean_apostrophes(word):
    if word in _LEADING_APOSTROPHE_WORDS:
        return word
    quoted = word.startswith("'")
    word = word.lstrip("'")
    stripped = word.rstrip("'")
    # A trailing apostrophe is kept for plural possessives (DEBTORS'), unless the word
    # was opened by a quote mark ('VICTORIA').
    if stripped != word and stripped.endswith("S") and not quoted:
        stripped += "'"
    while "''" in stripped:
        stripped = stripped.replace("''", "'")
    return stripped


def normalize_text(text):
    """Normalises text to LibriSpeech style.

    Upper-case words; apostrophes kept inside words and after a plural possessive;
    hyphens become spaces; any other punctuation is removed; accented letters lose
    their accents. Spelled out: cardinals (with thousands separators), decimals
    (``THREE POINT FIVE``), ordinals (``21st`` → ``TWENTY FIRST``), years
    (``1863`` → ``EIGHTEEN SIXTY THREE``), decades, amounts in dollars, pounds and
    euros, percentages, times (``10:30`` → ``TEN THIRTY``), simple fractions, number
    ranges, ``#``/``No.`` before a number, ``&``/``@``/``+``, common abbreviations
    (Mr., Mrs., Dr., St., Co., Jr., Gen., Capt., Lt., Col., etc.), ``a.m.``/``p.m.``
    (``A M``/``P M``), dotted acronyms (``U.S.`` → ``U S``), and roman numerals after
    chapter-like words (``CHAPTER FOUR``) or after a name (``GEORGE THE THIRD``).
    Four-digit numbers from 1100 to 2099 are read as years.

    Arguments
    ---------
    text : str
        Free text, one sentence or more.

    Returns
    -------
    str
        Only the characters ``A-Z``, ``'`` and single spaces, with no leading or
        trailing space (empty when nothing speakable is left).

    Example
    -------
    >>> normalize_text("Dr. Jones, Jr., lives at 221 Baker St.")
    'DOCTOR JONES JUNIOR LIVES AT TWO HUNDRED TWENTY ONE BAKER STREET'
    >>> normalize_text("St. James's Palace, No. 4; 2nd floor; £1.50 each")
    "SAINT JAMES'S PALACE NUMBER FOUR SECOND FLOOR ONE POUND FIFTY PENCE EACH"
    >>> normalize_text("Chapter IV: George III and the U.S.A. in 1776 (or 1900)")
    'CHAPTER FOUR GEORGE THE THIRD AND THE U S A IN SEVENTEEN SEVENTY SIX OR NINETEEN HUNDRED'
    >>> normalize_text("Müller's raison d'être -- 'Victoria'")
    "MULLER'S RAISON D'ETRE VICTORIA"
    >>> normalize_text("...")
    ''
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects a str, got {type(text).__name__}")
    if not text.isascii():
        text = text.translate(_UNICODE_MAP)
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _expand_abbreviations(text)
    text = _ROMAN_CARDINAL_RE.sub(_roman_cardinal, text)
    text = _ROMAN_REGNAL_RE.sub(_roman_regnal, text)
    if _ANY_DIGIT_RE.search(text):
        text = _expand_numbers(text)
    text = _DOTTED_ACRONYM_RE.sub(lambda m: " " + " ".join(c for c in m.group(0) if c != ".") + " ",
                                  text)
    for symbol, words in _SYMBOLS.items():
        text = text.replace(symbol, words)
    text = text.upper()
    text = re.sub(r"[^A-Z']+", " ", text)
    words = (_clean_apostrophes(w) if "'" in w else w for w in text.split())
    return " ".join(w for w in words if w.strip("'"))
