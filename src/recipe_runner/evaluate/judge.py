"""Optional LLM judge: in-character score 0-10 from any OpenAI-compatible chat endpoint.

The bible is the rubric. Off by default; the whole eval.judge block is a user setting (the
command line or the user's settings file, never a recipe: user_settings.py). The key is read
from the environment variable the user names and sent only to the endpoint the user configured:
a redirect is not followed (urllib would forward the Authorization header to any host it is
sent to), and the key is never logged. A failed call is reported as a missing score, not a
crash: the judge is advice, the rule-based checks are the record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(3xx): the key stays with the configured endpoint


_OPENER = urllib.request.build_opener(_RefuseRedirects)

RUBRIC = (
    "You grade whether a reply is in character. Character bible (JSON):\n{bible}\n\n"
    "User said: {prompt}\nReply: {answer}\n\n"
    "Score 0 (out of character: generic assistant voice, broken taboos) to 10 (exactly this character). "
    "Answer with the number only."
)


def judge_scores(jcfg, bible: dict, pairs: list[tuple[str, str]], timeout: float = 60.0) -> list[float | None]:
    key = os.environ.get(jcfg.api_key_env, "")
    url = jcfg.base_url.rstrip("/") + "/chat/completions"
    scores: list[float | None] = []
    for prompt, answer in pairs[: jcfg.max_answers]:
        body = {"model": jcfg.model, "temperature": 0, "max_tokens": 4, "messages": [
            {"role": "user", "content": RUBRIC.format(bible=json.dumps(bible, ensure_ascii=False), prompt=prompt,
                                                      answer=answer)}]}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                text = json.loads(response.read())["choices"][0]["message"]["content"]
            number = re.search(r"\d+(?:\.\d+)?", text)
            scores.append(min(max(float(number.group()), 0.0), 10.0) if number else None)
        except urllib.error.HTTPError as exc:
            where = f" to {exc.headers.get('Location')} (not followed: the key goes only to {url})" \
                if 300 <= exc.code < 400 else ""
            log.warning("judge: %s answered %d%s; no score", url, exc.code, where)
            scores.append(None)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.warning("judge: %s failed (%s); no score", url, type(exc).__name__)
            scores.append(None)
    return scores
