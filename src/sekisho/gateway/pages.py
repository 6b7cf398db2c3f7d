"""Error pages the gateway answers with itself: Japanese first, English on request.

They say what happened and what the person can do, and nothing internal: no upstream
address, no exception text, no stack (information disclosure to an attacker probing the
network behind the gateway). `Accept: application/json` gets a JSON body instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from sekisho.policy import explain_reason as _explain
from sekisho.web import Response, html, json_response

# status -> (code, Japanese title, Japanese text, English title, English text)
PAGES: dict[int, tuple[str, str, str, str, str]] = {
    400: ("bad-request", "不正なリクエスト", "リクエストの形式を受け付けられません。",
          "Bad request", "The request could not be accepted."),
    401: ("unauthenticated", "サインインが必要です", "サインインしてからもう一度お試しください。",
          "Sign-in required", "Please sign in and try again."),
    403: ("forbidden", "アクセスが拒否されました", "このページへのアクセスは許可されていません。",
          "Access denied", "You are not permitted to access this page."),
    404: ("not-found", "見つかりません", "このアドレスに対応するサービスはありません。",
          "Not found", "No service is available at this address."),
    405: ("method-not-allowed", "許可されていないメソッド", "この操作はできません。",
          "Method not allowed", "This method is not allowed here."),
    413: ("payload-too-large", "データが大きすぎます", "送信されたデータが上限を超えています。",
          "Payload too large", "The request body is larger than allowed."),
    414: ("uri-too-long", "アドレスが長すぎます", "アドレス (URL) が上限を超えています。",
          "URI too long", "The address (URL) is longer than allowed."),
    431: ("headers-too-large", "ヘッダーが大きすぎます", "リクエストヘッダーが上限を超えています。",
          "Request headers too large", "The request headers are larger than allowed."),
    502: ("bad-gateway", "接続先のサービスに接続できません",
          "しばらくしてからもう一度お試しください。解決しない場合は情報システム担当へご連絡ください。",
          "Bad gateway", "The service could not be reached. Please try again later."),
    503: ("unavailable", "一時的に利用できません",
          "安全のためアクセスを止めています。しばらくしてからもう一度お試しください。",
          "Service unavailable",
          "Access is paused for safety. Please try again later."),
    504: ("gateway-timeout", "接続先のサービスが応答しません",
          "しばらくしてからもう一度お試しください。",
          "Gateway timeout", "The service did not answer in time. Please try again later."),
}

_STYLE = ("body{font-family:sans-serif;max-width:40em;margin:3em auto;padding:0 1em;"
          "color:#222}h1{font-size:1.4em}ul{padding-left:1.2em}.en{color:#555}")


def explain_reason(code: str, language: str) -> str:
    try:
        return _explain(code, language)
    except (KeyError, ValueError):
        return code


def prefers_english(accept_language: str, cookie: str) -> bool:
    """`sekisho_lang=en`, or an Accept-Language whose first preference is English."""
    if "sekisho_lang=en" in cookie:
        return True
    if "sekisho_lang=ja" in cookie:
        return False
    best, best_q = "", -1.0
    for item in accept_language.split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > best_q:
            best, best_q = tag.strip().lower(), q
    return best.startswith("en")


def error_page(status: int, *, english: bool = False, as_json: bool = False,
               reasons: Sequence[str] = ()) -> Response:
    code, ja_title, ja_text, en_title, en_text = PAGES.get(status, PAGES[400])
    if as_json:
        return json_response({
            "error": code, "status": status,
            "message": en_title if english else ja_title,
            "message_ja": ja_title, "message_en": en_title,
            "reasons": [
                {"code": r, "ja": explain_reason(r, "ja"), "en": explain_reason(r, "en")}
                for r in reasons
            ],
        }, status)
    ja_items = "".join(f"<li>{escape(explain_reason(r, 'ja'))} <code>{escape(r)}</code></li>"
                       for r in reasons)
    en_items = "".join(f"<li>{escape(explain_reason(r, 'en'))} <code>{escape(r)}</code></li>"
                       for r in reasons)
    ja = (f'<section lang="ja"><h1>{ja_title}</h1><p>{ja_text}</p>'
          + (f"<p>理由:</p><ul>{ja_items}</ul>" if reasons else "") + "</section>")
    en = (f'<section lang="en" class="en"><h1>{en_title}</h1><p>{en_text}</p>'
          + (f"<p>Reasons:</p><ul>{en_items}</ul>" if reasons else "") + "</section>")
    lang = "en" if english else "ja"
    body = (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f"<title>{status} {en_title if english else ja_title}</title>"
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<style>{_STYLE}</style></head><body>"
            + (en + ja if english else ja + en) + "</body></html>")
    response = html(body, status)
    # The page's inline style needs an explicit allowance under the strict CSP.
    response.set_header("Content-Security-Policy",
                        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                        "base-uri 'none'; form-action 'none'")
    return response
