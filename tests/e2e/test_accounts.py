"""End-to-end tests: accounts, tokens, Neurons and limits as the official `cloudflare` and `openai`
SDKs see them. Each test makes its own account with the `ember` binary on the server's database
(the server checks accounts and tokens on every request, so they take effect at once).

Env (set by scripts/test.sh):
  EMBER_URL   base URL of a running Ember started with `--rate-limit text-embeddings=RPM`
  EMBER_BIN   the `ember` binary
  EMBER_DB    the database the server uses
  EMBER_EMBEDDINGS_RPM  the text-embeddings limit it was started with
"""

from __future__ import annotations

import os
import subprocess

import cloudflare
import httpx
import openai
import pytest
from cloudflare import Cloudflare
from openai import OpenAI

MINILM = "@hf/sentence-transformers/all-minilm-l6-v2"
ALLOCATION_MESSAGE = "You have used up your daily free allocation of"


def ember(*args: str) -> str:
    out = subprocess.run(
        [os.environ["EMBER_BIN"], *args, "--db", os.environ["EMBER_DB"]],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def new_account(plan: str = "paid", allocation: str = "10000") -> tuple[str, str]:
    account = ember("accounts", "create", "--plan", plan, "--daily-free-neurons", allocation)
    token = ember("tokens", "create", "--account", account, "--name", "e2e")
    return account, token


def cloudflare_client(ember_url: str, token: str) -> Cloudflare:
    return Cloudflare(api_token=token, base_url=ember_url + "/client/v4", max_retries=0)


def openai_client(ember_url: str, account: str, token: str) -> OpenAI:
    return OpenAI(
        base_url=f"{ember_url}/client/v4/accounts/{account}/ai/v1", api_key=token, max_retries=0
    )


def test_wrong_revoked_and_foreign_tokens_are_refused(ember_url: str):
    account, token = new_account()
    other, _ = new_account()
    with pytest.raises(cloudflare.AuthenticationError):
        cloudflare_client(ember_url, "ember_0_nope").ai.run(MINILM, account_id=account, text="hi")
    with pytest.raises(cloudflare.PermissionDeniedError) as refused:
        cloudflare_client(ember_url, token).ai.run(MINILM, account_id=other, text="hi")
    assert refused.value.status_code == 403
    assert cloudflare_client(ember_url, token).ai.run(MINILM, account_id=account, text="hi")["shape"] == [1, 384]
    ember("tokens", "revoke", token.split("_")[1])
    with pytest.raises(openai.AuthenticationError):
        openai_client(ember_url, account, token).embeddings.create(model=MINILM, input="hi")


def test_a_free_account_is_refused_with_3036_once_its_allocation_is_spent(ember_url: str):
    account, token = new_account(plan="free", allocation="0.00001")
    client = openai_client(ember_url, account, token)
    first = client.embeddings.create(model=MINILM, input="hello world")
    assert first.usage.model_extra["neurons"] > 0.00001
    with pytest.raises(openai.RateLimitError) as refused:
        client.embeddings.create(model=MINILM, input="hello world")
    assert refused.value.response.headers["retry-after"].isdigit()
    assert refused.value.body["type"] == "insufficient_quota"
    assert refused.value.body["message"].startswith(ALLOCATION_MESSAGE)
    reply = httpx.post(
        f"{ember_url}/client/v4/accounts/{account}/ai/run/{MINILM}",
        json={"text": "hello world"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 429
    assert reply.json()["errors"][0]["code"] == 3036
    assert reply.json()["errors"][0]["message"].startswith(ALLOCATION_MESSAGE)


def test_rate_limits_answer_3021_with_retry_after(ember_url: str):
    account, token = new_account()
    limit = int(os.environ["EMBER_EMBEDDINGS_RPM"])
    client = cloudflare_client(ember_url, token)
    for _ in range(limit):
        client.ai.run(MINILM, account_id=account, text="hi")
    with pytest.raises(cloudflare.RateLimitError) as limited:
        client.ai.run(MINILM, account_id=account, text="hi")
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.body["errors"][0]["code"] == 3021


def test_usage_route_and_cli_report_the_same_totals(ember_url: str):
    account, token = new_account()
    client = openai_client(ember_url, account, token)
    told = sum(client.embeddings.create(model=MINILM, input="hello world").usage.model_extra["neurons"] for _ in range(3))
    reply = httpx.get(
        f"{ember_url}/client/v4/accounts/{account}/ai/usage",
        params={"model": MINILM},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 200
    rows = reply.json()["result"]
    assert len(rows) == 1 and rows[0]["model"] == MINILM and rows[0]["requests"] == 3
    assert rows[0]["neurons"] == pytest.approx(told, rel=1e-9)
    printed = ember("usage", "--account", account)
    assert MINILM in printed and f"total neurons: {told:.4f}" in printed
