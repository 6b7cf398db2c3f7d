"""The password policy table: length after NFKC, the common list, names."""

from __future__ import annotations

import pytest

from sekisho.identity.password_policy import COMMON_COUNT, check_password, common_passwords


@pytest.mark.parametrize(("password", "codes"), [
    ("short", {"too-short"}),
    ("elevenchars", {"too-short"}),  # 11
    ("twelve chars", set()),  # 12 exactly
    ("ＡＢＣＤＥＦＧＨＩＪＫ", {"too-short"}),  # 11 full-width letters are 11 after NFKC
    ("123qweasdzxc", {"too-common"}),
    ("QAZWSXEDCRFV", {"too-common"}),  # case-insensitive
    ("password", {"too-short", "too-common"}),
    ("yamada-taro-2026", {"contains-username"}),
    ("MyYAMADA-TAROpass", {"contains-username"}),
    ("hanako sato 1977", {"contains-display-name"}),
    ("HANAKOSATO-2026", {"contains-display-name"}),
    ("KIKAKU.ka-2026!", {"contains-email"}),
    ("x" * 1025, {"too-long"}),
    ("駅前の桜が満開になりました", set()),  # Japanese passphrase, 13 characters
    ("a-much-better-passphrase", set()),
])
def test_policy_table(password, codes):
    problems = check_password(password, username="yamada-taro", display_name="Hanako Sato",
                              email="kikaku.ka@city.example.jp")
    assert {p.code for p in problems} == codes
    for problem in problems:  # every problem speaks Japanese and English
        assert problem.ja and problem.en and " / " in str(problem)


def test_password_equal_to_short_username_is_rejected():
    assert {p.code for p in check_password("abcdefghijkl", username="abcdefghijkl")} \
        == {"contains-username"}


def test_common_list_is_the_ranked_top_10000():
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    common = common_passwords()
    assert len(common) == COMMON_COUNT
    assert "123456" in common and "password" in common
    ranked = FREQUENCY_LISTS["passwords"]
    assert ranked[COMMON_COUNT - 1] in common and ranked[COMMON_COUNT] not in common
