"""The web chat in headless Chromium: it streams an answer and shows the thinking in a <details>.

Needs the Debian packages `chromium` and `chromium-driver` and the pip package `selenium`; skips
with the reason otherwise. Saves screenshots to artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from serve_stub import ANSWER, REASONING, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
    pytest.skip(
        "headless browser test needs /usr/bin/chromium and chromedriver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs `pip install selenium`")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1000,760",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_web_chat_streams_answer_and_thinking(browser, tokenizer):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ARTIFACTS.mkdir(exist_ok=True)
    # a slow model (40 ms per token) so the page has time to show partial answers
    with start_server(tokenizer, delay_s=0.04) as live:
        browser.get(live.url + "/")
        deadline = time.monotonic() + 10
        while browser.find_element(By.ID, "model-name").text != "tiny-r1":
            assert time.monotonic() < deadline, "the page did not load the model list"
            time.sleep(0.05)
        box = browser.find_element(By.ID, "input")
        box.send_keys("What is 2+2?")
        box.send_keys(Keys.ENTER)

        seen_answers, seen_reasoning = set(), set()
        deadline = time.monotonic() + 20
        while True:
            answer = browser.execute_script(
                "const a = document.querySelector('.answer'); return a ? a.textContent : '';"
            )
            reasoning = browser.execute_script(
                "const r = document.querySelector('details.thinking .reasoning'); return r ? r.textContent : '';"
            )
            seen_answers.add(answer)
            seen_reasoning.add(reasoning)
            if len(seen_reasoning) == 3:
                browser.save_screenshot(str(ARTIFACTS / "web_chat_thinking.png"))
            stats = browser.find_elements(By.CSS_SELECTOR, ".stats")
            if answer == ANSWER and stats and stats[0].text:
                break
            assert time.monotonic() < deadline, f"no complete answer; last seen {answer!r}"
            time.sleep(0.02)

        # streamed: partial texts were on screen before the whole answer / thinking
        assert any(0 < len(a) < len(ANSWER) and ANSWER.startswith(a) for a in seen_answers), seen_answers
        assert any(0 < len(r) < len(REASONING) for r in seen_reasoning), seen_reasoning
        details = browser.find_element(By.CSS_SELECTOR, "details.thinking")
        assert details.get_attribute("open") is None, "the thinking collapses once the answer is there"
        details.find_element(By.TAG_NAME, "summary").click()
        assert browser.find_element(By.CSS_SELECTOR, "details.thinking .reasoning").text == REASONING
        assert "Thought for" in details.find_element(By.TAG_NAME, "summary").text

        # a second turn keeps the conversation (the page sends the history)
        box.send_keys("Are you sure?")
        box.send_keys(Keys.ENTER)
        deadline = time.monotonic() + 20
        while len([a for a in browser.find_elements(By.CSS_SELECTOR, ".answer") if a.text == ANSWER]) < 2:
            assert time.monotonic() < deadline, "no second answer"
            time.sleep(0.05)
        assert (
            "What is 2+2?" in live.model.prompts_seen[-1] and "Are you sure?" in live.model.prompts_seen[-1]
        )
        browser.save_screenshot(str(ARTIFACTS / "web_chat.png"))
