"""The labelling page in headless Chromium, driven as a rater would: open, rank, flag, undo, submit, reload.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when apt is usable); without
them every test here skips, saying so. ``TEXTGYM_LABEL_SCREENSHOT=docs/labelling.png`` saves the page as the
docs show it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

from label_helpers import SCRIPT, log_lines, running_server
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import reward_models
from reward_models.labelling.items import load_items
from reward_models.labelling.server import LabelApp
from reward_models.labelling.storage import LabelStore, Task

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver (`make test` does when apt works)",
)
COMPLETIONS = Path(reward_models.__file__).parent / "data" / "openings_smollm2_completions.jsonl"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def server(tmp_path):
    """Three shipped openings with three of their SmolLM2 completions each, the first one replaced by HTML/JS."""
    lines = COMPLETIONS.read_text().splitlines()[:3]
    batch = tmp_path / "batch.jsonl"
    with open(batch, "w") as file:
        for number, line in enumerate(lines, start=1):
            record = json.loads(line)
            completions = record["completions"][:3]
            if number == 1:
                completions[0] = " " + SCRIPT
            file.write(json.dumps({"id": str(number), "prompt": record["prompt"], "completions": completions}) + "\n")
    items = load_items(batch)
    store = LabelStore(tmp_path / "labels", batch, items)
    tasks = [Task(item, (0, 1, 2)) for item in items]  # in file order, so the test knows what comes next
    app = LabelApp(store, tasks, raters={"tok-alice": "alice"})
    with running_server(app) as url:
        yield url, tmp_path / "labels", items
    store.close()


def wait_for(driver, condition, timeout=10):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def cards(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#completions .card")


def press(driver, keys):
    driver.find_element(By.TAG_NAME, "body").send_keys(keys)


def test_rank_flag_undo_submit_reload(browser, server):
    url, out, items = server
    browser.get(url + "/?token=tok-alice")
    wait_for(browser, lambda d: text(d, "progress") == "0 of 3")
    assert text(browser, "prompt") == items[0].prompt

    # Model text is shown as text: the <script> is visible, it did not run, and no <b> element was made.
    first = cards(browser)[0].find_element(By.CSS_SELECTOR, ".text")
    assert first.text.strip() == SCRIPT
    assert browser.title == "textgym label"
    assert not browser.find_elements(By.CSS_SELECTOR, "#completions b, #completions script")

    assert not browser.find_element(By.ID, "login").is_displayed()

    # Keyboard: ranks 3, 1, 2 for the three cards in turn (the first flagged), then Enter.
    press(browser, "31")
    press(browser, "\ue013f")  # up arrow: back to the second card, flag it
    browser.find_element(By.ID, "comment").send_keys("second: one odd word", "\ue00c")  # Escape leaves the box
    if os.environ.get("TEXTGYM_LABEL_SCREENSHOT"):
        Path(os.environ["TEXTGYM_LABEL_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(os.environ["TEXTGYM_LABEL_SCREENSHOT"])
    press(browser, "\ue0152")  # down arrow to the third card, rank 2
    press(browser, "\ue007")  # Enter
    wait_for(browser, lambda d: text(d, "progress") == "1 of 3")
    assert text(browser, "prompt") == items[1].prompt
    first = log_lines(out)[0]
    assert (first["ranking"], first["flags"], first["comment"]) == (
        [[1], [2], [0]],
        {"1": "unsafe"},
        "second: one odd word",
    )

    # Mouse: a tie between the first two, the third flagged unsafe, a comment, then Submit.
    for position, rank in ((0, 1), (1, 1), (2, 2)):
        cards(browser)[position].find_element(By.CSS_SELECTOR, f'.ranks button[data-rank="{rank}"]').click()
    cards(browser)[2].find_element(By.CSS_SELECTOR, ".flag").click()
    browser.find_element(By.ID, "comment").send_keys("the third one is rude")
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, lambda d: text(d, "progress") == "2 of 3")
    second = log_lines(out)[-1]
    assert (second["item"], second["ranking"], second["flags"]) == ("2", [[0, 1], [2]], {"2": "unsafe"})
    assert second["comment"] == "the third one is rude"

    # Undo brings that answer back, as it was; change it and submit again.
    press(browser, "u")
    wait_for(browser, lambda d: text(d, "progress") == "1 of 3")
    assert text(browser, "prompt") == items[1].prompt
    assert "flagged: unsafe" in cards(browser)[2].text
    assert log_lines(out)[-1]["event"] == "undo"
    cards(browser)[2].find_element(By.CSS_SELECTOR, '.ranks button[data-rank="1"]').click()  # now a three-way tie
    press(browser, "\ue007")
    wait_for(browser, lambda d: text(d, "progress") == "2 of 3")
    assert log_lines(out)[-1]["ranking"] == [[0, 1, 2]]

    # A reload (or a restarted browser) resumes at the third item.
    browser.refresh()
    wait_for(browser, lambda d: text(d, "progress") == "2 of 3")
    assert text(browser, "prompt") == items[2].prompt
    press(browser, "123\ue007")
    wait_for(browser, lambda d: not d.find_element(By.ID, "done").get_attribute("hidden"))
    assert text(browser, "progress") == "3 of 3"
    assert [r["event"] for r in log_lines(out)] == ["label", "label", "undo", "label", "label"]


def test_incomplete_ranking_and_unknown_token_are_explained(browser, server):
    url, out, _ = server
    browser.get(url + "/?token=tok-alice")
    wait_for(browser, lambda d: text(d, "progress") == "0 of 3")
    press(browser, "1\ue007")  # only one of three ranked
    wait_for(browser, lambda d: "Give every completion a rank" in text(d, "status"))
    assert log_lines(out) == []
    browser.get(url + "/?token=wrong")
    wait_for(browser, lambda d: "unknown rater token" in text(d, "status"))
    assert browser.find_element(By.ID, "login").is_displayed()
    time.sleep(0.1)
    assert log_lines(out) == []


def test_an_rlhf_round_waits_for_people_on_the_page_then_continues(browser, tmp_path):
    """`textgym rlhf --raters human`: the round serves its batch, a rater ranks it in the browser, the loop goes on."""
    from test_rlhf import start_human_round

    out = tmp_path / "run"
    url, thread, result = start_human_round(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the round samples before it serves the page
        try:
            browser.get(url + "/?rater=alice")
            wait_for(browser, lambda d: text(d, "progress") == "0 of 3")
            break
        except Exception:  # the page is not up yet (connection refused) or not rendered
            time.sleep(0.5)
    else:
        pytest.fail("the labelling page never came up")
    assert not (out / "round-1" / "reward_model").exists()  # the loop waits for the labels
    for done in range(1, 4):
        press(browser, "".join(str(rank) for rank in range(1, len(cards(browser)) + 1)) + "\ue007")  # ranks, Enter
        if done < 3:
            wait_for(browser, lambda d, done=done: text(d, "progress") == f"{done} of 3")
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert [r["labels"] for r in result["rows"]] == [0, 3]
    assert (out / "round-1" / "reward_model").is_dir()  # trained on the three rankings from the page
