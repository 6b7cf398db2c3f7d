"""Password policy: what a new password must satisfy, as a list of problems (codes + text).

Rules (NIST SP 800-63B style: length and a block list, no composition rules):
- at least `MIN_LENGTH` characters, counted after NFKC normalisation (what is hashed);
- at most `MAX_LENGTH` characters (argon2 input stays bounded);
- not one of the 10,000 most common passwords (case-insensitive). The list is the ranked
  `passwords` list that the `zxcvbn` package ships as data; we take its first 10,000 at first
  use. Nothing is fetched at run time;
- does not contain the user name, the display name (or a part of it of 3+ characters) or the
  e-mail's local part, case-insensitively.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

MIN_LENGTH = 12
MAX_LENGTH = 1024
COMMON_COUNT = 10_000
_MIN_PART = 3  # shorter name parts (e.g. a 2-kanji family name) would reject too much


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    code: str  # "too-short" | "too-long" | "too-common" | "contains-username" | ...
    ja: str
    en: str

    def __str__(self) -> str:
        return f"{self.ja} / {self.en}"


@functools.cache
def common_passwords() -> frozenset[str]:
    """The 10,000 most common passwords, lower case, from zxcvbn's ranked list."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    ranked: list[str] = list(FREQUENCY_LISTS["passwords"])
    if len(ranked) < COMMON_COUNT:  # a broken package must not silently weaken the policy
        raise RuntimeError("zxcvbn password list is shorter than expected")
    return frozenset(p.casefold() for p in ranked[:COMMON_COUNT])


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def check_password(
    password: str, *, username: str, display_name: str = "", email: str = ""
) -> list[PolicyProblem]:
    """All problems with `password` for this user; an empty list means acceptable."""
    problems: list[PolicyProblem] = []
    normalised = unicodedata.normalize("NFKC", password)
    folded = normalised.casefold()
    length = len(normalised)
    if length < MIN_LENGTH:
        problems.append(PolicyProblem(
            "too-short",
            f"パスワードは {MIN_LENGTH} 文字以上にしてください (現在 {length} 文字)",
            f"The password must have at least {MIN_LENGTH} characters (it has {length})",
        ))
    if length > MAX_LENGTH:
        problems.append(PolicyProblem(
            "too-long",
            f"パスワードは {MAX_LENGTH} 文字以下にしてください",
            f"The password must have at most {MAX_LENGTH} characters",
        ))
    if folded in common_passwords():
        problems.append(PolicyProblem(
            "too-common",
            "よく使われるパスワードの一覧に含まれているため使えません",
            "This password is on the list of the most common passwords",
        ))
    name = _fold(username).strip()
    if name and (folded == name or (len(name) >= _MIN_PART and name in folded)):
        problems.append(PolicyProblem(
            "contains-username",
            "パスワードにユーザー名を含めないでください",
            "The password must not contain the user name",
        ))
    display = _fold(display_name).strip()
    parts = {display, display.replace(" ", ""), *display.split()}
    if any(p and (folded == p or (len(p) >= _MIN_PART and p in folded)) for p in parts):
        problems.append(PolicyProblem(
            "contains-display-name",
            "パスワードに表示名 (氏名) を含めないでください",
            "The password must not contain the display name",
        ))
    local = _fold(email).split("@", 1)[0].strip()
    if local and len(local) >= _MIN_PART and local in folded:
        problems.append(PolicyProblem(
            "contains-email",
            "パスワードにメールアドレスを含めないでください",
            "The password must not contain the e-mail address",
        ))
    return problems
