"""The chat page in headless Chromium: type a message, watch the answer stream in.

Needs the system's chromium and chromedriver (scripts/setup.sh installs them) and the
selenium package; nothing is downloaded. Skipped where they are missing.
"""

import shutil
import tempfile
import time

import pytest

from tests.models import smollm2
from tests.server_process import ServerProcess

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromedriver are not installed")


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(smollm2(), "-c", "256", "-np", "1")
    yield srv
    srv.stop()


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="llamazip-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_streams_an_answer(server, browser):
    from selenium.webdriver.common.by import By
    browser.get(server.url + "/")
    assert browser.title == "llamazip"
    browser.find_element(By.ID, "toggle").click()
    max_tokens = browser.find_element(By.ID, "maxTokens")
    max_tokens.clear()
    max_tokens.send_keys("12")
    browser.execute_script("document.getElementById('maxTokens').dispatchEvent(new Event('change'))")
    browser.find_element(By.ID, "input").send_keys("What is the capital of France?")
    # Streaming: record, in the page itself, every text the answer shows before it is
    # done (polling from here is too slow to see tokens that arrive every few ms).
    browser.execute_script("""
        window.partialTexts = new Set();
        new MutationObserver(() => {
            const all = document.querySelectorAll('.msg.assistant');
            const last = all[all.length - 1];
            if (last && last.textContent && last.getAttribute('data-done') !== '1')
                window.partialTexts.add(last.textContent);
        }).observe(document.body, {subtree: true, childList: true, characterData: true,
                                   attributes: true});
    """)
    browser.find_element(By.ID, "send").click()

    deadline = time.monotonic() + 180
    answer = None
    while time.monotonic() < deadline:
        answers = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        if answers:
            answer = answers[-1]
            if answer.get_attribute("data-done") == "1":
                break
        time.sleep(0.05)
    partial_texts = browser.execute_script("return window.partialTexts.size")
    assert answer is not None and answer.get_attribute("data-done") == "1"
    assert answer.text.strip()
    # a streamed answer grows through several texts; one sent whole shows at most one
    assert partial_texts >= 3, f"the answer arrived all at once ({partial_texts} partial texts)"
    assert browser.find_elements(By.CSS_SELECTOR, ".stats")      # t/s shown after the answer
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == []


def test_stop_button_ends_generation(server, browser):
    from selenium.webdriver.common.by import By
    browser.get(server.url + "/")
    browser.find_element(By.ID, "input").send_keys("Write a very long story about a dragon.")
    browser.find_element(By.ID, "send").click()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answers = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        if answers and answers[-1].text:
            break
        time.sleep(0.05)
    browser.find_element(By.ID, "stop").click()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20:
        if browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].get_attribute("data-done"):
            break
        time.sleep(0.05)
    assert browser.find_element(By.ID, "stop").get_attribute("disabled")
    # The server notices the closed connection and frees the slot within a token or two.
    while time.monotonic() - t0 < 30:
        status, slots = server.get("/slots")
        if status == 200 and not slots[0]["is_processing"]:
            break
        time.sleep(0.1)
    assert not slots[0]["is_processing"]
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == []
