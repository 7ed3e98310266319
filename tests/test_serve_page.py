"""The page at / in a real headless browser (Debian's chromium driven by Playwright): it lists the
served prompts, classifies a text and shows the label; a generation prompt streams its text."""

import shutil

import pytest

from serving import GENERATION, METHODS, SENTIMENT, LiveServer, make_prompt
from softprompt.engine import Engine
from softprompt.serve import PromptRegistry, create_app
from tiny import tiny_base


@pytest.fixture
def browser_tools(missing_tool):
    """Playwright's sync API and the chromium it drives; a skip when either is missing, a failure under CI=true."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        missing_tool("Debian's chromium", "apt-get install chromium (make test does: scripts/browser.sh)")
    try:
        from playwright import sync_api
    except ImportError:
        missing_tool("playwright", "pip install -e '.[dev]' (make test does)")
    return sync_api, chromium


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_the_page_lists_prompts_classifies_a_text_and_streams_a_completion(tmp_path, browser_tools):
    playwright, chromium = browser_tools
    base = tiny_base("llama")
    registry = PromptRegistry(base, Engine(base))
    registry.add_file("sentiment", make_prompt(base, tmp_path / "s.safetensors", METHODS["ptuning_v2"], SENTIMENT))
    registry.add_file("answers", make_prompt(base, tmp_path / "g.safetensors", METHODS["prompt_tuning"], GENERATION))
    expected = registry.engine  # the engine answers the page's requests; compare with the route directly
    with LiveServer(create_app(registry)) as server, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("tr.prompt")
            listed = page.locator("tr.prompt td:first-child").all_inner_texts()
            assert listed == ["answers", "sentiment"]
            assert "ptuning_v2" in page.locator("tr.prompt[data-name=sentiment]").inner_text()
            page.locator("tr.prompt[data-name=sentiment]").click()
            page.fill("#input", "a warm and funny film")
            page.click("#run")
            page.wait_for_selector("#predicted-label")
            label = page.inner_text("#predicted-label")
            bars = page.locator(".bar").count()
            import httpx

            direct = httpx.post(server.url + "/v1/classify", json={"model": "sentiment", "input": "a warm and funny film"},
                                timeout=30).json()["data"][0]["label"]
            assert label == direct and bars == 2
            page.select_option("#prompt-select", "answers")
            page.fill("#input", "great")
            page.click("#run")
            page.wait_for_function("document.getElementById('output').textContent.length > 0")
            page.wait_for_timeout(500)
            streamed = page.inner_text("#output")
            completion = httpx.post(server.url + "/v1/completions", json={"model": "answers", "prompt": "great",
                                                                          "max_tokens": 64, "temperature": 0},
                                    timeout=30).json()["choices"][0]["text"]
            assert streamed.strip() == completion.strip()
        finally:
            browser.close()
    assert expected.running() == 0
