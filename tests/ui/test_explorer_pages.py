"""The explorer's newer pages in a real browser against the shared `allmende up` network
(two providers, one cheating, two validators), at desktop and phone sizes: an address found
by the search box and its page (role, stake, what it earned, copy button), the chain height,
each provider's throughput, capacity, uptime and version, earnings over time, and the
playground as a chat: several turns with a system prompt (the context grows), a stop button
that ends a stream mid-answer, Markdown drawn as elements (never as HTML), and "copy as
curl / Python" snippets that, run as they are, get an answer from the gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from typer.testing import CliRunner

from allmende import __version__
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import devnet_accounts
from allmende.cli import app as cli
from allmende.testing.browser import chromium, console_errors
from tests.conftest import wait_for
from tests.ui.test_explorer import explorer_url, shoot

PHONE, DESKTOP = (390, 844), (1280, 900)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(*DESKTOP) as driver:
        yield driver


def open_view(driver: Any, network: dict[str, Any], target: str, timeout: float = 30) -> None:
    """Open `#target` (a view, or address/0x…) and wait until its data is drawn."""
    url = explorer_url(network)
    if not driver.current_url.startswith(url):
        driver.get(url + "#" + target)
    else:
        driver.execute_script("location.hash = arguments[0]", target)
    view = target.split("/")[0]
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.loaded") == view)


def _chat(network: dict[str, Any], n: int = 3) -> None:
    client = OpenAI(base_url=network["gateway_url"], api_key="unused", max_retries=0, timeout=60)
    for _ in range(n):
        client.chat.completions.create(
            model="allmende:tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )


def test_search_opens_an_address_page_with_what_the_chain_says(cheater_network: dict[str, Any], browser: Any) -> None:
    # Prepare
    network = cheater_network
    provider = network["providers"][0]["address"]
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))
    open_view(browser, network, "network")

    # Execute: a malformed address first, then the provider's in lower case
    box = browser.find_element(By.ID, "search-input")
    box.send_keys("0x12")
    browser.find_element(By.ID, "search-go").click()
    refused = browser.find_element(By.ID, "status").text
    box.clear()
    box.send_keys(provider.lower())
    browser.find_element(By.ID, "search-go").click()
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.loaded") == "address")

    # Assert: the page names the address in full (checksummed), its role and its stake as on chain
    assert "not an address" in refused
    assert browser.find_element(By.ID, "address-value").text == provider
    assert "provider" in browser.find_element(By.ID, "address-role").text
    stake = reader.registry.stake_of(provider) // 10**18
    wait_for(
        "the page's stake to be the chain's",
        lambda: f"{stake:,}.00 ALM" in browser.find_element(By.ID, "address-cards").text,
        30,
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-address-earnings svg")
    copy = browser.find_element(By.ID, "address-copy")
    copy.click()
    WebDriverWait(browser, 10).until(lambda _: copy.get_attribute("data-copied") == "true")
    shoot(browser, "address")
    # an address in any table links to its page
    open_view(browser, network, "network")
    link = browser.find_element(By.CSS_SELECTOR, f"#providers-table a.addr[href='#address/{provider}']")
    link.click()
    WebDriverWait(browser, 30).until(
        lambda d: (
            d.find_element(By.ID, "address-value").text == provider
            and d.execute_script("return document.body.dataset.loaded") == "address"
        )
    )
    assert console_errors(browser) == []


def test_network_shows_chain_height_and_each_providers_throughput_capacity_uptime_version(
    cheater_network: dict[str, Any], browser: Any
) -> None:
    network = cheater_network
    height = ChainClient(network["rpc_url"]).block_number()
    _chat(network)
    open_view(browser, network, "network")

    def drawn() -> bool:
        rows = browser.find_elements(By.CSS_SELECTOR, "#providers-table tbody tr[data-address]")
        return len(rows) == 2 and all("tok/s" in r.text for r in rows if r.get_attribute("data-health") == "healthy")

    wait_for("each serving provider's throughput", drawn, 60)
    head = browser.find_element(By.ID, "chain-head")
    wait_for("the header's block height", lambda: int(head.get_attribute("data-block") or 0) >= height, 30)
    assert "chain 31337" in head.text
    table = browser.find_element(By.ID, "providers-table").text
    assert "busy" in table and __version__ in table
    # reputation reads as what it is: audits passed, or none yet (never a bare "50 %" for no scores)
    gateway = network["gateway_url"].removesuffix("/v1")
    for listed in httpx.get(f"{gateway}/explorer/api/network", timeout=30).json()["providers"]:
        row = f"#providers-table tr[data-address='{listed['address']}'] td.reputation"
        cell = browser.find_element(By.CSS_SELECTOR, row)
        wanted = "% of audits passed" if listed["reputation"]["scores"] else "not audited yet"
        wait_for(f"{listed['address']}'s reputation", lambda c=cell, w=wanted: w in c.text, 10)
    assert browser.find_elements(By.CSS_SELECTOR, "#providers-table .uptime rect.up")
    assert console_errors(browser) == []


def test_money_draws_each_providers_earnings_over_time(cheater_network: dict[str, Any], browser: Any) -> None:
    # Prepare: answers owed to the first provider, redeemed now as its operator would
    network = cheater_network
    row = network["providers"][0]
    index = next(a.index for a in devnet_accounts(10) if a.address == row["address"])
    _chat(network)
    redeemed = CliRunner().invoke(  # in this process: an interpreter start-up was ~1.5 s of CPU
        cli, ["provider-redeem", "--key", f"devnet:{index}", "--deployments", network["deployments"],
              "--state-dir", str(Path(row["log"]).with_suffix(""))],
    )  # fmt: skip
    assert redeemed.exit_code == 0, redeemed.output + repr(redeemed.exception)
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))
    gateway = network["gateway_url"].removesuffix("/v1")

    # Execute
    open_view(browser, network, "money")

    # Assert: a curve is drawn, and the provider's ends at what Channels credited it
    wait_for(
        "an earnings curve",
        lambda: browser.find_elements(By.CSS_SELECTOR, "#chart-earnings polyline, #chart-earnings circle"),
        60,
    )

    def ends_at_the_credit() -> bool:  # retried: the provider's own settlement may redeem in between
        curve = httpx.get(f"{gateway}/explorer/api/money", timeout=30).json()["earned_over_time"][row["address"]]
        return int(curve[-1]["earned"]) == reader.channels.earnings(row["address"]) > 0

    wait_for("the curve to end at the provider's credit", ends_at_the_credit, 30)
    shoot(browser, "money")
    assert console_errors(browser) == []


def _send(browser: Any, text: str) -> Any:
    prompt = browser.find_element(By.ID, "chat-input")
    prompt.clear()
    prompt.send_keys(text)
    browser.find_element(By.ID, "chat-send").click()
    answer = browser.find_element(By.ID, "chat-answer")
    WebDriverWait(browser, 90).until(lambda _: answer.get_attribute("data-done") == "true")
    assert "error" not in (answer.get_attribute("class") or ""), answer.text
    return answer


def test_playground_is_a_chat_with_a_system_prompt_and_a_growing_context(
    cheater_network: dict[str, Any], browser: Any
) -> None:
    # Prepare
    network = cheater_network
    open_view(browser, network, "playground")
    browser.find_element(By.ID, "chat-new").click()
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("allmende:tiny")
    for field, value in (("chat-temperature", "0"), ("chat-max", "8")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "chat-system").send_keys("You answer briefly.")

    # Execute: two turns
    _send(browser, "First question?")
    first_in = _tokens_in(browser)
    _send(browser, "Second question?")
    second_in = _tokens_in(browser)

    # Assert: four messages shown; the second request carried the first turn (its prompt is longer)
    roles = [m.get_attribute("data-role") for m in browser.find_elements(By.CSS_SELECTOR, "#chat-log .msg")]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert second_in > first_in
    assert "tokens/s" in browser.find_element(By.ID, "receipt").text
    shoot(browser, "playground-chat")
    assert console_errors(browser) == []


def _tokens_in(browser: Any) -> int:
    text = browser.find_element(By.ID, "receipt").text
    line = next(line for line in text.splitlines() if line.endswith(" out") and " in, " in line)
    return int(line.split(" in, ")[0].replace(",", ""))


def test_stop_ends_an_answer_mid_stream(cheater_network: dict[str, Any], browser: Any) -> None:
    network = cheater_network
    open_view(browser, network, "playground")
    browser.find_element(By.ID, "chat-new").click()
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("allmende:tiny")
    limit = browser.find_element(By.ID, "chat-max")
    limit.clear()
    limit.send_keys("400")
    # press Stop the moment the first piece of the answer is drawn
    browser.execute_script(
        "new MutationObserver((_, watch) => { const a = document.getElementById('chat-answer');"
        " if (a && a.dataset.deltas) { document.getElementById('chat-stop').click(); watch.disconnect(); } })"
        ".observe(document.getElementById('chat-log'), {subtree: true, attributes: true, childList: true})"
    )
    prompt = browser.find_element(By.ID, "chat-input")
    prompt.clear()
    prompt.send_keys("Tell me a long story.")
    browser.find_element(By.ID, "chat-send").click()
    answer = browser.find_element(By.ID, "chat-answer")
    WebDriverWait(browser, 90).until(lambda _: answer.get_attribute("data-done") == "true")

    assert answer.get_attribute("data-stopped") == "true"
    assert int(answer.get_attribute("data-deltas") or 0) < 400
    assert browser.find_element(By.ID, "chat-send").is_enabled()
    assert not browser.find_element(By.ID, "chat-stop").is_enabled()
    assert console_errors(browser) == []


def test_answers_are_drawn_as_markdown_elements_never_as_html(cheater_network: dict[str, Any], browser: Any) -> None:
    open_view(browser, cheater_network, "playground")
    text = "# Title\n\nSome **strong** and *soft* `code`.\n\n- one\n- two\n\n```python\nprint('<img src=x onerror=alert(1)>')\n```\n<img src=x onerror=\"window.owned=1\">"  # noqa: E501
    drawn = browser.execute_script(
        "const node = markdown(arguments[0]); document.body.append(node); node.id = 'md-probe';"
        "return {h: node.querySelectorAll('h4').length, strong: node.querySelectorAll('strong').length,"
        " em: node.querySelectorAll('em').length, code: node.querySelectorAll('p code').length,"
        " li: node.querySelectorAll('ul li').length, pre: node.querySelector('pre code').textContent,"
        " img: node.querySelectorAll('img').length, text: node.textContent}",
        text,
    )
    browser.execute_script("document.getElementById('md-probe').remove()")
    assert (drawn["h"], drawn["strong"], drawn["em"], drawn["code"], drawn["li"]) == (1, 1, 1, 1, 2)
    assert drawn["pre"] == "print('<img src=x onerror=alert(1)>')"
    assert drawn["img"] == 0 and '<img src=x onerror="window.owned=1">' in drawn["text"]
    assert browser.execute_script("return window.owned") is None


def test_copy_as_curl_and_python_run_as_they_are(cheater_network: dict[str, Any], browser: Any) -> None:
    # Prepare: a conversation of one turn with a system prompt
    network = cheater_network
    open_view(browser, network, "playground")
    browser.find_element(By.ID, "chat-new").click()
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("allmende:tiny")
    limit = browser.find_element(By.ID, "chat-max")
    limit.clear()
    limit.send_keys("6")
    system = browser.find_element(By.ID, "chat-system")
    system.clear()
    system.send_keys("Be brief.")
    _send(browser, "Hello?")
    browser.find_element(By.ID, "chat-input").send_keys("And now?")

    # Execute: both snippets, run as a user would paste them
    browser.find_element(By.ID, "copy-curl").click()
    curl = browser.find_element(By.ID, "chat-code").text
    by_curl = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
    browser.find_element(By.ID, "copy-python").click()
    python = browser.find_element(By.ID, "chat-code").text
    by_python = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=120)

    # Assert: the whole conversation went, and each got an answer
    assert "Be brief." in curl and "Hello?" in curl and "And now?" in curl
    assert by_curl.returncode == 0, by_curl.stderr
    reply = json.loads(by_curl.stdout)
    assert reply["choices"][0]["message"]["role"] == "assistant" and reply["usage"]["completion_tokens"] > 0
    assert "Be brief." in python and "from openai import OpenAI" in python
    assert by_python.returncode == 0 and by_python.stdout.strip(), by_python.stderr
    assert console_errors(browser) == []


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_new_views_fit_the_screen(cheater_network: dict[str, Any], browser: Any, size: tuple[int, int]) -> None:
    network = cheater_network
    provider = network["providers"][0]["address"]
    browser.set_window_size(*size)
    try:
        for target in ("network", "money", f"address/{provider}", "playground"):
            open_view(browser, network, target)
            wide = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert wide <= 0, f"{target}: the page is {wide}px wider than the screen"
            if size == PHONE:
                shoot(browser, f"phone-{target.split('/')[0]}")
        hint = browser.find_element(By.ID, "providers-hint")
        open_view(browser, network, "network")
        assert hint.is_displayed() == (size == PHONE)  # the table scrolls sideways on a phone: say so
    finally:
        browser.set_window_size(*DESKTOP)
    assert console_errors(browser) == []
