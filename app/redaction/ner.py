"""The NER backstop: a chat model served by the fleet names people and organisations the
rules and the known-entity lists missed. It sees the text with every rule-found value already
replaced by its kind. Any failure is NerUnavailable: the caller refuses, never goes on."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx

from app.redaction.errors import NerUnavailable
from app.redaction.tokens import TOKEN_RE

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You find the names of people and of organisations (companies, funds, institutions) in a "
    'text. Answer with JSON only: {"persons": [...], "orgs": [...]}, each name copied exactly '
    "as it is written in the text. Leave out placeholders in square brackets such as "
    "[PERSON] or [ORG_2], product names, programming terms, cloud services and acronyms of "
    "technologies (S3, EKS, GPU, C4)."
)

TECH_TERMS = frozenset(
    """s3 eks ecs ec2 aws gcp gke aks api apis gpu gpus cpu cpus tpu ram ssd nvme sql nosql json
    yaml xml html css http https tcp udp ssh tls ssl dns vpn vpc iam sdk cli ui ux llm llms
    nlp ner pii gdpr hipaa pdf csv cuda vllm nats kv c4 k8s docker kubernetes linux python
    rust java go redis kafka s3a hdfs ml ai os""".split()  # noqa: SIM905
)
_TECHNICAL = re.compile(r"^(?:[A-Za-z]{1,4}\d{1,4}[A-Za-z]?|v?\d+(?:\.\d+)+\w*|[0-9a-f]{7,64})$")


def technical(name: str) -> bool:
    """``S3``, ``EKS``, ``C4``, ``H100``, versions and hashes: never treated as names."""
    return name.casefold() in TECH_TERMS or bool(_TECHNICAL.match(name))


class NerClient:
    """Asks ``{base_url}/chat/completions`` (the gateway's own /v1 by default)."""

    def __init__(self, base_url: str, model: str | None, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s

    async def _model(self, client: httpx.AsyncClient) -> str:
        if self.model:
            return self.model
        resp = await client.get(f"{self.base_url}/models")
        if resp.status_code != 200:
            raise NerUnavailable(f"model list answered HTTP {resp.status_code}")
        data = resp.json().get("data") or []
        if not data or not isinstance(data[0], dict) or not data[0].get("id"):
            raise NerUnavailable("no model is served")
        return str(data[0]["id"])

    async def find(self, texts: list[str]) -> list[list[tuple[str, str]]]:
        """Per text, the (PERSON|ORG, name) pairs found in it."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                model = await self._model(client)
                return [await self._one(client, model, t) for t in texts]
        except NerUnavailable:
            raise
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("NER model unavailable: %s", type(exc).__name__)
            raise NerUnavailable(type(exc).__name__) from None

    async def _one(self, client: httpx.AsyncClient, model: str, text: str) -> list[tuple[str, str]]:
        if not text.strip():
            return []
        body = {
            "model": model,
            "temperature": 0,
            "max_tokens": 1024,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": text},
            ],
        }
        resp = await client.post(f"{self.base_url}/chat/completions", json=body)
        if resp.status_code != 200:
            raise NerUnavailable(f"HTTP {resp.status_code}")
        try:
            content = resp.json()["choices"][0]["message"]["content"]
            found = _parse(content)
        except (KeyError, IndexError, TypeError, ValueError):
            raise NerUnavailable("unreadable answer") from None
        return [(kind, name) for kind, name in found if _keep(name, text)]


def _parse(content: Any) -> list[tuple[str, str]]:
    if not isinstance(content, str):
        raise ValueError("no content")
    start, end = content.find("{"), content.rfind("}")
    if start == -1 or end < start:
        raise ValueError("no JSON object")
    obj = json.loads(content[start : end + 1])
    out: list[tuple[str, str]] = []
    for field, kind in (("persons", "PERSON"), ("orgs", "ORG")):
        names = obj.get(field) or []
        if not isinstance(names, list):
            raise ValueError("not a list")
        out += [(kind, n.strip()) for n in names if isinstance(n, str)]
    return out


def _keep(name: str, text: str) -> bool:
    """A name the model really read in the text, not a placeholder nor a technical token."""
    return (
        len(name) >= 2
        and name in text
        and "[" not in name
        and not TOKEN_RE.search(name)
        and not technical(name)
    )
