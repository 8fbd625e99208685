"""Optional LLM judge: in-character score 0-10 from any OpenAI-compatible chat endpoint.

The bible is the rubric. Off by default (eval.judge.enabled); the key is read from the
environment variable the recipe names, never from the recipe. A failed call is reported as a
missing score, not a crash: the judge is advice, the rule-based checks are the record.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request

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
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = json.loads(response.read())["choices"][0]["message"]["content"]
            number = re.search(r"\d+(?:\.\d+)?", text)
            scores.append(min(max(float(number.group()), 0.0), 10.0) if number else None)
        except (OSError, ValueError, KeyError, IndexError):
            scores.append(None)
    return scores
