"""LibriSpeech-style text normalisation."""

import json
import re

import pytest

from cald_speech.data.synth import default_data_dir
from cald_speech.data.text import (
    normalize_text,
    number_to_words,
    ordinal_to_words,
    roman_to_int,
    year_to_words,
)

DATA = default_data_dir()  # $CALD_SPEECH_DATA, else shared/data beside the repository
ALLOWED = re.compile(r"^(?:[A-Z']+(?: [A-Z']+)*)?$")


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "ZERO"),
        (7, "SEVEN"),
        (13, "THIRTEEN"),
        (40, "FORTY"),
        (99, "NINETY NINE"),
        (100, "ONE HUNDRED"),
        (101, "ONE HUNDRED ONE"),
        (999, "NINE HUNDRED NINETY NINE"),
        (1000, "ONE THOUSAND"),
        (1863, "ONE THOUSAND EIGHT HUNDRED SIXTY THREE"),
        (20000, "TWENTY THOUSAND"),
        (1000001, "ONE MILLION ONE"),
        (3_000_000_000, "THREE BILLION"),
        (-12, "MINUS TWELVE"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


@pytest.mark.parametrize(
    "n, words",
    [(1, "FIRST"), (2, "SECOND"), (3, "THIRD"), (4, "FOURTH"), (5, "FIFTH"), (8, "EIGHTH"),
     (9, "NINTH"), (11, "ELEVENTH"), (12, "TWELFTH"), (20, "TWENTIETH"),
     (21, "TWENTY FIRST"), (22, "TWENTY SECOND"), (33, "THIRTY THIRD"),
     (100, "ONE HUNDREDTH"), (1000, "ONE THOUSANDTH")],
)
def test_ordinal_to_words(n, words):
    assert ordinal_to_words(n) == words


@pytest.mark.parametrize(
    "year, words",
    [(1863, "EIGHTEEN SIXTY THREE"), (1900, "NINETEEN HUNDRED"), (1905, "NINETEEN OH FIVE"),
     (1776, "SEVENTEEN SEVENTY SIX"), (2000, "TWO THOUSAND"), (2005, "TWO THOUSAND FIVE"),
     (2010, "TWENTY TEN"), (2024, "TWENTY TWENTY FOUR"), (1100, "ELEVEN HUNDRED"),
     (999, "NINE HUNDRED NINETY NINE")],
)
def test_year_to_words(year, words):
    assert year_to_words(year) == words


def test_roman_to_int():
    assert [roman_to_int(s) for s in ("I", "IV", "IX", "XIV", "XL", "MCMXCIX")] == [
        1, 4, 9, 14, 40, 1999]
    assert roman_to_int("IIII") is None
    assert roman_to_int("VV") is None
    assert roman_to_int("") is None


CASES = [
    # abbreviations (as in LJ Speech)
    ("Mr. Neild was told", "MISTER NEILD WAS TOLD"),
    ("Mrs. Oswald said", "MISSUS OSWALD SAID"),
    ("Dr. Carrico treated the President's", "DOCTOR CARRICO TREATED THE PRESIDENT'S"),
    ("surgeon, Dr Paul C. Peters; and Mr Smith", "SURGEON DOCTOR PAUL C PETERS AND MISTER SMITH"),
    ("James Jarman, Jr.", "JAMES JARMAN JUNIOR"),
    ("Maltby and Co. would issue warrants", "MALTBY AND COMPANY WOULD ISSUE WARRANTS"),
    ("sending to Maltby and Co.'s wharf", "SENDING TO MALTBY AND COMPANY'S WHARF"),
    ("Gen. Walker and Capt. Fritz, Lt. Day, Col. Brown, Maj. Ray, Sgt. Hill",
     "GENERAL WALKER AND CAPTAIN FRITZ LIEUTENANT DAY COLONEL BROWN MAJOR RAY SERGEANT HILL"),
    ("The Rev. W. Bailey, LL.D., was convicted", "THE REVEREND W BAILEY L L D WAS CONVICTED"),
    ("Messrs. Rogers and Co., Clement's Lane", "MESSIEURS ROGERS AND COMPANY CLEMENT'S LANE"),
    ("T. Briggs, Esq., Robarts and Co.", "T BRIGGS ESQUIRE ROBARTS AND COMPANY"),
    ("at Bury St. Edmunds", "AT BURY SAINT EDMUNDS"),
    ("the church of St. Sepulchre", "THE CHURCH OF SAINT SEPULCHRE"),
    ("his chambers in Jermyn St.", "HIS CHAMBERS IN JERMYN STREET"),
    ("the U.S. Secret Service", "THE U S SECRET SERVICE"),
    ("No. 10 and Nos. 3 and 4", "NUMBER TEN AND NUMBERS THREE AND FOUR"),
    ("He said No.", "HE SAID NO"),
    ("tea, sugar, etc.", "TEA SUGAR ET CETERA"),
    ("Smith vs. Jones", "SMITH VERSUS JONES"),
    # numbers
    ("one hundred ninety-nine debtors", "ONE HUNDRED NINETY NINE DEBTORS"),
    ("6,439 persons", "SIX THOUSAND FOUR HUNDRED THIRTY NINE PERSONS"),
    ("1,863 men", "ONE THOUSAND EIGHT HUNDRED SIXTY THREE MEN"),
    ("about 3.5 miles", "ABOUT THREE POINT FIVE MILES"),
    ("0.25 inch", "ZERO POINT TWO FIVE INCH"),
    ("the 1st, 2nd, 3rd and 21st", "THE FIRST SECOND THIRD AND TWENTY FIRST"),
    ("on the 4th of July", "ON THE FOURTH OF JULY"),
    ("in 1863.", "IN EIGHTEEN SIXTY THREE"),
    ("in 1900 and 2005", "IN NINETEEN HUNDRED AND TWO THOUSAND FIVE"),
    ("the 1860s", "THE EIGHTEEN SIXTIES"),
    ("$5", "FIVE DOLLARS"),
    ("$1", "ONE DOLLAR"),
    ("$3.50", "THREE DOLLARS FIFTY CENTS"),
    ("$0.01", "ONE CENT"),
    ("$2.5 million", "TWO POINT FIVE MILLION DOLLARS"),
    ("£5 a week", "FIVE POUNDS A WEEK"),
    ("£1.50", "ONE POUND FIFTY PENCE"),
    ("50% of them", "FIFTY PERCENT OF THEM"),
    ("12.5 per cent", "TWELVE POINT FIVE PERCENT"),
    ("at 10:30", "AT TEN THIRTY"),
    ("at 10:05", "AT TEN OH FIVE"),
    ("at 12:00", "AT TWELVE O'CLOCK"),
    ("at 10:30 a.m.", "AT TEN THIRTY A M"),
    ("at 7 p.m.", "AT SEVEN P M"),
    ("at 9:00 A.M. sharp", "AT NINE A M SHARP"),
    ("by 5pm", "BY FIVE P M"),
    ("1/2 a mile and 3/4 of it", "ONE HALF A MILE AND THREE QUARTERS OF IT"),
    ("pages 10-12", "PAGES TEN TO TWELVE"),
    ("room #5", "ROOM NUMBER FIVE"),
    ("agent 007", "AGENT ZERO ZERO SEVEN"),
    ("tech n9ne", "TECH N NINE NE"),
    # roman numerals where safe
    ("Chapter IV", "CHAPTER FOUR"),
    ("Henry VIII", "HENRY THE EIGHTH"),
    ("George III and Louis XIV", "GEORGE THE THIRD AND LOUIS THE FOURTEENTH"),
    ("World War II", "WORLD WAR TWO"),
    ("the chapter I read", "THE CHAPTER I READ"),
    ("Class C", "CLASS C"),
    # punctuation, hyphens, apostrophes, accents
    ("half-way between Buckingham and St. James's Palaces",
     "HALF WAY BETWEEN BUCKINGHAM AND SAINT JAMES'S PALACES"),
    ("DON'T and John's and debtors' side", "DON'T AND JOHN'S AND DEBTORS' SIDE"),
    ("went on board the 'Victoria' at once", "WENT ON BOARD THE VICTORIA AT ONCE"),
    ("Quote. the apartments (sixty persons) End quote.",
     "QUOTE THE APARTMENTS SIXTY PERSONS END QUOTE"),
    ("a “sponge,” requires", "A SPONGE REQUIRES"),
    ("At Müller's execution", "AT MULLER'S EXECUTION"),
    ("bric-à-brac and causes célèbre", "BRIC A BRAC AND CAUSES CELEBRE"),
    ("he’s here", "HE'S HERE"),
    ("'em and 'tis", "'EM AND 'TIS"),
    ("jack@gmail dot com & co", "JACK AT GMAIL DOT COM AND CO"),
    ("what is i. b. m. stock at", "WHAT IS I B M STOCK AT"),
    ("  spaced\tout\n", "SPACED OUT"),
    ("?!...", ""),
    ("", ""),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize("text, expected", CASES)
def test_normalize_text_is_idempotent(text, expected):
    assert normalize_text(expected) == expected


def test_normalize_rejects_non_str():
    with pytest.raises(TypeError, match="expects a str"):
        normalize_text(None)


def _lj_sentences():
    path = DATA / "text" / "ljspeech_sentences.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return [line.split("\t", 1)[1] for line in path.read_text(encoding="utf-8").splitlines()]


def test_whole_lj_corpus_normalises_to_allowed_characters():
    sentences = _lj_sentences()
    assert len(sentences) > 10000
    out = [normalize_text(s) for s in sentences]
    bad = [(s, o) for s, o in zip(sentences, out) if not ALLOWED.match(o)]
    assert not bad, bad[:5]
    # nothing left unexpanded: no abbreviation with its stop, no digit, no symbol
    assert not any(re.search(r"\b(MR|MRS|DR)\b", o) for o in out)
    assert sum(o.count("MISTER") for o in out) >= 200
    assert sum(o.count("MISSUS") for o in out) >= 200
    # idempotent on the real corpus
    assert all(normalize_text(o) == o for o in out)


def test_slurp_sentences_normalise():
    path = DATA / "text" / "slurp_devel.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    sentences = [json.loads(line)["sentence"] for line in path.read_text().splitlines()]
    out = [normalize_text(s) for s in sentences]
    assert all(ALLOWED.match(o) for o in out)
    assert "WHAT IS THE EXCHANGE RATE OF U S D TO CAD" in out
    assert all(o for o in out), "a SLURP sentence normalised to nothing"
