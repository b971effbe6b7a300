"""`gptkit serve` with an API key and CORS, and its page driven in Debian's headless Chromium (Selenium
with Debian's chromedriver: nothing is downloaded). Under CI=true a missing browser fails, never skips."""

import os
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
from servefixtures import Server, tiny_checkpoint

KEY = "sk-test-9f3c2a"
ORIGIN = "http://app.example.test"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ck = tiny_checkpoint(tmp_path_factory.mktemp("page") / "run" / "step_000010", block_size=64, seed=1)
    s = Server(ck.parent, "--cors-origin", ORIGIN, env={"GPTKIT_API_KEY": KEY})
    yield s
    s.close()


def test_the_key_is_wanted_everywhere_but_health_and_the_page(server):
    for key in (None, "wrong", KEY[:-1]):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(server.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).completions.create(
            model=server.model, prompt="Hi", max_tokens=1
        )
    good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model=server.model, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
    assert httpx.get(server.url + "/health").json()["auth"] is True
    assert "<textarea" in httpx.get(server.url + "/").text
    assert "API key: from GPTKIT_API_KEY" in "".join(server.log)
    assert KEY not in "".join(server.log)  # the key is never logged


def test_cors_only_for_the_origin_given(server):
    pre = httpx.options(
        server.url + "/v1/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    assert httpx.get(server.url + "/health").headers["access-control-allow-origin"] == ORIGIN


def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) or shutil.which("chromium") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)")
        pytest.skip("no Debian chromium + chromium-driver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_the_page_streams_the_greedy_completion(server, tmp_path):
    prompt, n = "Once upon a time", 48
    want = (
        openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        .completions.create(model=server.model, prompt=prompt, max_tokens=n, temperature=0)
        .choices[0]
        .text
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(server.url + "/")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "keybox").is_displayed())  # it asks for the key
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.ID, "prompt").send_keys(prompt)
        for name, value in (("max_tokens", n), ("temperature", 0)):
            box = driver.find_element(By.ID, name)
            box.clear()
            box.send_keys(str(value))
        # every length the completion's text takes, recorded in the page as it changes
        driver.execute_script(
            "window.lengths = []; const el = document.getElementById('completion');"
            "new MutationObserver(() => window.lengths.push(el.textContent.length))"
            ".observe(el, {childList: true, characterData: true, subtree: true});"
        )
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith("done"))
        assert driver.find_element(By.ID, "completion").get_property("textContent") == want
        lengths = [x for x in driver.execute_script("return window.lengths") if x]
        assert len(set(lengths)) > 1 and lengths == sorted(lengths)  # it grew, step by step
        assert driver.find_element(By.ID, "status").text.startswith("done (length)")
        time.sleep(0.2)
        shot = tmp_path / "serve_page.png"
        assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("GPTKIT_SCREENSHOT"):  # a copy for the README or a report
            shutil.copy(shot, os.environ["GPTKIT_SCREENSHOT"])
    finally:
        driver.quit()
