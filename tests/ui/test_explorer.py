"""The explorer in a real browser (Debian's headless Chromium, driven by selenium) against
`allmende up` with two providers, one of them cheating, and two validators: every view
loads without console errors and without a request leaving the gateway, the provider
table lists both providers, a playground chat streams its answer and shows its receipt,
and the fraud case against the cheater appears with its verdict. Screenshots of every
view go to $ALLMENDE_SCREENSHOTS (`make screenshots` sets it to bench/results/ui/, the
README's pictures), else to a folder under the system's temporary directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from eth_utils import keccak
from openai import OpenAI
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import devnet_accounts
from allmende.chain.bindings import MICRO_EPSILON, TEMPLATES
from allmende.core import request_cost
from allmende.testing.browser import chromium, console_errors
from tests.conftest import cheater_verdict, wait_for

SHOTS = Path(os.environ.get("ALLMENDE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "allmende-screenshots")
VIEWS = ("network", "models", "money", "trust", "data", "playground")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def explorer_url(network: dict[str, Any]) -> str:
    return network["gateway_url"].removesuffix("/v1") + "/"


def show(driver: Any, network: dict[str, Any], view: str, timeout: float = 30) -> None:
    """Open a view and wait until its data has been drawn."""
    url = explorer_url(network)
    if not driver.current_url.startswith(url):
        driver.get(url + "#" + view)
    else:
        driver.execute_script("location.hash = arguments[0]", view)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.loaded") == view)


def shoot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_provider_table_lists_both_providers(cheater_network: dict[str, Any], browser: Any) -> None:
    network = cheater_network
    show(browser, network, "network")
    rows = browser.find_elements(By.CSS_SELECTOR, "#providers-table tbody tr[data-address]")
    listed = {row.get_attribute("data-address") for row in rows}
    assert listed == {p["address"] for p in network["providers"]}
    assert "allmende:tiny" in browser.find_element(By.ID, "providers-table").text


def test_phone_sized_screen_needs_no_sideways_scrolling(cheater_network: dict[str, Any], browser: Any) -> None:
    network = cheater_network
    browser.set_window_size(390, 844)
    try:
        for view in ("network", "playground"):
            show(browser, network, view)
            wide = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert wide <= 0, f"{view}: the page is {wide}px wider than a phone screen"
            shoot(browser, f"phone-{view}")
    finally:
        browser.set_window_size(1280, 900)


def test_playground_streams_an_answer_and_shows_its_receipt(cheater_network: dict[str, Any], browser: Any) -> None:
    network = cheater_network
    show(browser, network, "playground")
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("allmende:tiny")
    temperature = browser.find_element(By.ID, "chat-temperature")
    temperature.clear()
    temperature.send_keys("0")  # greedy: the same answer on every run
    prompt = browser.find_element(By.ID, "chat-input")
    prompt.clear()
    prompt.send_keys("Wem gehört die Allmende?")
    browser.find_element(By.ID, "chat-send").click()

    answer = browser.find_element(By.ID, "chat-answer")
    WebDriverWait(browser, 90).until(lambda _: answer.get_attribute("data-done") == "true")
    assert "error" not in (answer.get_attribute("class") or ""), answer.text
    assert int(answer.get_attribute("data-deltas") or 0) > 1  # drawn piece by piece from the SSE stream
    receipt = browser.find_element(By.ID, "receipt")
    provider = receipt.get_attribute("data-provider")
    assert provider in {p["address"] for p in network["providers"]}
    assert "verified" in receipt.text and "dUSD" in receipt.text and "in," in receipt.text
    shoot(browser, "playground-answer")

    # the same receipt through the JSON endpoint: the price is the provider's offer on chain
    response_id = receipt.get_attribute("data-response-id")
    gateway = network["gateway_url"].removesuffix("/v1")
    shown = httpx.get(f"{gateway}/explorer/api/receipts/{response_id}", timeout=10).json()
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))
    offer = reader.registry.offer(provider, bytes.fromhex(shown["model_id"][2:]))
    assert shown["provider"] == provider
    fair = request_cost(shown["tokens_in"], shown["tokens_out"], offer.price_in, offer.price_out)
    assert int(shown["amount"]) == fair
    assert console_errors(browser) == []


def test_every_view_loads_without_console_errors_or_outside_requests(
    cheater_network: dict[str, Any], browser: Any
) -> None:
    network = cheater_network
    # a few answers through the OpenAI client first, so the charts have something to draw;
    # each carries its receipt in an `allmende` field that the client keeps as an extra
    client = OpenAI(base_url=network["gateway_url"], api_key="unused", max_retries=0, timeout=60)
    for _ in range(4):
        reply = client.chat.completions.create(
            model="allmende:tiny", messages=[{"role": "user", "content": "Allmende?"}], max_tokens=8
        )
        extra = reply.model_extra or {}
        shown, usage = extra["allmende"], reply.usage
        assert shown["id"] == reply.id and usage is not None
        assert (shown["tokens_in"], shown["tokens_out"]) == (usage.prompt_tokens, usage.completion_tokens)
    console_errors(browser)  # start from an empty console log
    for view in VIEWS:
        show(browser, network, view)
        shoot(browser, view)
    assert console_errors(browser) == []
    origin = urlsplit(explorer_url(network)).netloc
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(urlsplit(u).netloc == origin for u in fetched), fetched
    # every form control has a label, every table a name
    unlabeled = browser.execute_script(
        "return [...document.querySelectorAll('select, input, textarea')]"
        ".filter(e => !document.querySelector(`label[for='${e.id}']`)).map(e => e.id)"
    )
    assert unlabeled == []
    assert browser.execute_script(
        "return [...document.querySelectorAll('table')].every(t => t.getAttribute('aria-label') || "
        "t.getAttribute('aria-labelledby'))"
    )


def test_a_model_owner_cannot_inject_markup_into_the_page(cheater_network: dict[str, Any], browser: Any) -> None:
    """Licenses, endpoints and descriptions are written on chain by anyone: the page must
    show them as text. A model registered with HTML as its license, derived from the tiny
    model, appears literally, in the table and as a node of the lineage graph."""
    network = cheater_network
    owner = devnet_accounts(6)[5]  # an account no process of the network uses
    deployment = Deployment.load(network["deployments"])
    models = Contracts(ChainClient(network["rpc_url"], owner.key), deployment).models
    tiny = next(m for m in models.all_ids() if models.get(m).metadata_uri == "allmende:tiny")
    hostile = '<img src=x onerror="window.owned=1"><b>MIT</b>'
    model_id = keccak(os.urandom(32))  # a fresh id: the test can run again on the same chain
    models.register(model_id, hostile, 100, parents=[tiny])

    show(browser, network, "models")
    WebDriverWait(browser, 30).until(lambda d: hostile in d.find_element(By.ID, "models-table").text)

    assert browser.execute_script("return window.owned") is None
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main b") == []
    edges = browser.find_elements(By.CSS_SELECTOR, "#lineage path.edge")
    assert len(edges) >= 1  # tiny → the new model
    shoot(browser, "models")
    assert console_errors(browser) == []


def test_data_view_shows_the_grant_its_access_log_and_epsilon_spent(
    cheater_network: dict[str, Any], browser: Any
) -> None:
    network = cheater_network
    grantee, owner, vault = devnet_accounts(7)[4:7]  # accounts no process of the network uses
    deployment = Deployment.load(network["deployments"])
    as_owner = Contracts(ChainClient(network["rpc_url"], owner.key), deployment).data
    as_vault = Contracts(ChainClient(network["rpc_url"], vault.key), deployment).data
    dataset_id = keccak(os.urandom(32))
    as_owner.register_dataset(dataset_id, vault.address, "CC-BY-4.0")
    expires = as_owner.client.timestamp() + 30 * 86_400
    grant_id = as_owner.grant(dataset_id, grantee.address, TEMPLATES["aggregate"], [], expires, 2 * MICRO_EPSILON)
    as_vault.record_access(grant_id, keccak(os.urandom(32)), b"\0" * 32, keccak(b"result"), MICRO_EPSILON // 2)

    show(browser, network, "data")
    row = f"#grants-table tr[data-grant='{grant_id}']"
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    assert "0.500 / 2.000" in browser.find_element(By.CSS_SELECTOR, row).text
    assert "0x" + dataset_id.hex()[:6] in browser.find_element(By.ID, "log-table").text
    bar = browser.find_element(By.CSS_SELECTOR, f"#chart-epsilon rect.b0[data-grant='{grant_id}']")
    track = browser.find_element(By.CSS_SELECTOR, f"#chart-epsilon rect.b1[data-grant='{grant_id}']")
    assert float(bar.get_attribute("width")) == pytest.approx(float(track.get_attribute("width")) / 4)
    shoot(browser, "data")
    assert console_errors(browser) == []


def test_fraud_case_appears_with_its_verdict(cheater_network: dict[str, Any], browser: Any) -> None:
    network = cheater_network
    case = cheater_verdict(network)
    assert case.status == 2

    show(browser, network, "trust")
    row = f"#cases-table tr[data-case='{case.case_id}']"
    WebDriverWait(browser, 30).until(
        lambda d: (found := d.find_elements(By.CSS_SELECTOR, row)) and found[0].get_attribute("data-state") == "guilty"
    )
    text = browser.find_element(By.CSS_SELECTOR, row).text
    assert "verdict: guilty" in text and "guilty" in text
    shoot(browser, "trust")
    gateway = network["gateway_url"].removesuffix("/v1")
    cases = httpx.get(f"{gateway}/explorer/api/trust", timeout=30).json()["cases"]
    listed = next(c for c in cases if c["case_id"] == case.case_id)
    assert listed["verdict"] == "guilty" and int(listed["slashed"]) == case.slashed > 0
    assert console_errors(browser) == []


def test_explorer_api_answers_scripts_and_bad_ids(cheater_network: dict[str, Any]) -> None:
    network = cheater_network
    gateway = network["gateway_url"].removesuffix("/v1")
    index = httpx.get(f"{gateway}/explorer/api", timeout=10).json()["endpoints"]
    for path in index:
        if "{" not in path:
            assert httpx.get(gateway + path, timeout=30).status_code == 200, path
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))

    def stakes_agree() -> bool:  # retried: a validator may slash the cheater between the two reads
        providers = httpx.get(f"{gateway}/explorer/api/network", timeout=30).json()["providers"]
        listed = {p["address"]: int(p["stake"]) for p in providers}
        return listed == {p["address"]: reader.registry.stake_of(p["address"]) for p in network["providers"]}

    wait_for("the explorer's stakes to equal the chain's", stakes_agree, 30)
    assert f"open {network['explorer_url']} in a browser" in (Path(network["root"]) / "up.log").read_text()
    missing = httpx.get(f"{gateway}/explorer/api/receipts/chatcmpl-nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
