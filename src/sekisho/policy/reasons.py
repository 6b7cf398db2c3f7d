"""The closed list of reason codes a decision may carry, with Japanese and English text.

Reasons are data: the audit log stores the codes, the 403 page and `sekisho policy explain`
show the text. A code not listed here must never appear in a `Decision` (a test checks every
criterion's codes against this table), so the list is the contract with those readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

REASONS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "user-authenticated": ("サインイン済みです", "The user is signed in"),
        "user-unauthenticated": ("サインインしていません", "The user is not signed in"),
        "user-authorized": ("このユーザーは許可されています", "This user is permitted"),
        "user-unauthorized": ("このユーザーには許可がありません", "This user is not permitted"),
        "group-authorized": (
            "所属グループが許可されています",
            "A group of the user is permitted",
        ),
        "group-unauthorized": (
            "所属グループに許可がありません",
            "The user's groups are not permitted",
        ),
        "email-authorized": (
            "メールアドレスが許可されています",
            "The e-mail address is permitted",
        ),
        "email-unauthorized": (
            "メールアドレスに許可がありません",
            "The e-mail address is not permitted",
        ),
        "source-ip-allowed": (
            "接続元 IP アドレスが許可されています",
            "The source IP address is permitted",
        ),
        "source-ip-denied": (
            "この接続元 IP アドレスからのアクセスは許可されていません",
            "Access from this source IP address is not permitted",
        ),
        "http-method-allowed": (
            "HTTP メソッドが許可されています",
            "The HTTP method is permitted",
        ),
        "http-method-denied": (
            "この HTTP メソッドは許可されていません",
            "This HTTP method is not permitted",
        ),
        "http-path-allowed": (
            "このパスへのアクセスが許可されています",
            "Access to this path is permitted",
        ),
        "http-path-denied": (
            "このパスへのアクセスは許可されていません",
            "Access to this path is not permitted",
        ),
        "mfa-satisfied": (
            "2 段階目の認証が済んでいます",
            "A second factor has been proven",
        ),
        "mfa-required": (
            "このアプリには 2 段階目の認証 (TOTP やパスキー) が必要です",
            "This app needs a second factor (TOTP or a passkey)",
        ),
        "auth-fresh": (
            "最近本人確認が済んでいます",
            "Identity was proven recently",
        ),
        "auth-too-old": (
            "最後の本人確認から時間が経っています。もう一度本人確認してください",
            "Identity was proven too long ago; prove it again",
        ),
        "idp-authorized": (
            "サインインに使った IdP が許可されています",
            "The identity provider used to sign in is permitted",
        ),
        "idp-unauthorized": (
            "サインインに使った IdP はこのアプリに許可されていません",
            "The identity provider used to sign in is not permitted for this app",
        ),
        "segment-allowed": (
            "このセグメントへのアクセスが許可されています",
            "Access to this segment is permitted",
        ),
        "segment-denied": (
            "このセグメントへのアクセスは許可されていません",
            "Access to this segment is not permitted",
        ),
        "time-allowed": (
            "アクセスが許可されている日時です",
            "Access is permitted at this time",
        ),
        "time-denied": (
            "この日時 (曜日・時間帯・期間・祝日) のアクセスは許可されていません",
            "Access is not permitted at this time (weekday, hours, dates or holiday)",
        ),
        "device-authorized": (
            "登録済みの許可された端末です",
            "The device is enrolled and permitted",
        ),
        "device-unauthorized": (
            "登録済みの許可された端末ではありません (端末証明書がない、停止・失効済み、"
            "別の利用者の端末、または端末の状態がプロファイルを満たさない)",
            "The device is not an enrolled, permitted device (no device certificate, "
            "suspended or revoked, another user's device, or its posture does not meet "
            "the profile)",
        ),
        "client-certificate-authorized": (
            "クライアント証明書が許可されています",
            "The client certificate is permitted",
        ),
        "client-certificate-unauthorized": (
            "許可されたクライアント証明書が提示されていません",
            "No permitted client certificate was presented",
        ),
        "storage-unavailable": (
            "認証情報を確認できないため拒否しました (データベースに接続できません)",
            "Denied because the session could not be checked (storage unavailable)",
        ),
        "audit-unavailable": (
            "監査ログに記録できないため拒否しました",
            "Denied because the audit log cannot record the request",
        ),
        "always": (
            "ポリシーはすべてのリクエストに一致します",
            "The policy matches every request",
        ),
        "never": (
            "ポリシーはどのリクエストにも一致しません",
            "The policy matches no request",
        ),
        "default-deny": (
            "許可するルールがないため拒否しました（既定で拒否）",
            "Denied because no rule allows it (deny by default)",
        ),
        "policy-error": (
            "ポリシーの評価中にエラーが発生したため拒否しました",
            "Denied because an error occurred while evaluating the policy",
        ),
    }
)

LANGUAGES = ("ja", "en")


def explain_reason(code: str, language: str = "ja") -> str:
    """Return the text for a reason code in `language` ("ja" or "en").

    Raises KeyError for a code outside the closed list and ValueError for another language.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r} (expected 'ja' or 'en')")
    ja, en = REASONS[code]
    return ja if language == "ja" else en
