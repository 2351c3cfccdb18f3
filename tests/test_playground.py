"""The playground page of `vas serve`, in a real headless browser (Debian's chromium, driven by
playwright) against the real app on the real local model.

The page loads its sliders from /vas/info; one Run streams a base answer (every beta 0) and a VAS
answer (the sliders' betas) side by side. The claims are relations: the page sends the betas the
sliders show, shows exactly the text and shifts the server streamed, shades no token at beta 0,
and shows the final chunk's cost; a refused request (no key, a spent budget) shows the server's
error message in the pane. Set VAS_SCREENSHOT=1 to save the screenshot the README shows
(docs/playground.png); otherwise it goes to tmp_path, so tests never dirty the repo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.browser import Recorder, launch_browser, serve_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "playground-test-key"
SPENT_KEY = "playground-spent-key"  # a budget of one billed token: any answer overspends it
DOCS_SHOT = Path(__file__).resolve().parent.parent / "docs" / "playground.png"
PROMPT = "Describe a day at the beach in two sentences."


@pytest.fixture(scope="module")
def app_url(local_server):
    """The real `vas serve` app on the session's local server, under uvicorn on a thread.

    Two reward-based value models keep it fast (no torch forward): VADER sentiment of the prefix
    (the prefix-reward baseline) and a keyword reward.
    """
    from vas_api.serve.app import create_app
    from vas_api.serve.config import KeySpec, ServeConfig, ValueSpec

    config = ServeConfig(
        upstream=local_server.base_url,
        model=local_server.model,
        values=[ValueSpec("sentiment", "reward:vader"),
                ValueSpec("sunny", "reward:keyword:words=sun|sunny|sunshine|warm")],
        keys=[KeySpec(KEY), KeySpec(SPENT_KEY, max_tokens=1)],
        chat_template=str(local_server.gguf_path),
        profile=local_server.profile,
    )
    app = Recorder(create_app(config), "/v1/chat/completions")
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def browser():
    with launch_browser() as b:
        yield b


def _chat_bodies(page) -> list[dict]:
    """Collect the JSON bodies of the page's chat requests, in the order they were sent."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    return bodies


def _streamed(body: bytes) -> tuple[str, list[float], dict]:
    """(text, per-token shifts, final chunk) of one SSE response body as the server sent it."""
    text, shifts, final = "", [], {}
    for line in body.decode().splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue  # blank separators and ": ping" comments
        chunk = json.loads(line[5:])
        assert "error" not in chunk, chunk
        # The page's rule: a chunk's vas_tokens when it has them, else its text unshaded.
        content = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
        for t in chunk.get("vas_tokens", [{"text": content, "shift": 0}] if content else []):
            text += t["text"]
            shifts.append(float(t["shift"]))
        if "vas" in chunk:
            final = chunk
    return text, shifts, final


def _error_of(body: bytes) -> dict:
    """The OpenAI error object of a refused request (a JSON body) or of a stream's last event."""
    if body.startswith(b"{"):
        return json.loads(body)["error"]
    events = [line[5:] for line in body.decode().splitlines() if line.startswith("data:")]
    return json.loads(events[-1])["error"]


def test_playground_streams_base_and_vas_side_by_side(app_url, browser, tmp_path):
    url, recorder = app_url
    page = browser.new_page(viewport={"width": 1280, "height": 480})
    bodies = _chat_bodies(page)
    seen = len(recorder.exchanges)
    page.goto(url + "/")

    info = page.evaluate("fetch('/vas/info').then(r => r.json())")
    sliders = page.locator(".beta-slider")
    sliders.first.wait_for()
    assert sorted(s.get_attribute("data-name") for s in sliders.all()) == \
        sorted(v["name"] for v in info["value_models"]) == ["sentiment", "sunny"]

    # Move the sentiment slider as a user does (keys: input events), 12 steps of 0.5 -> +6.
    slider = page.locator(".beta-slider[data-name=sentiment]")
    slider.focus()
    for _ in range(12):
        page.keyboard.press("ArrowRight")
    assert slider.input_value() == "6"
    page.fill("#key", KEY)
    page.fill("#max-tokens", "40")
    page.fill("#prompt", PROMPT)
    page.click("#run")
    page.wait_for_selector("#base-out[data-done='1']", timeout=240_000)
    page.wait_for_selector("#vas-out[data-done='1']", timeout=240_000)

    # Both requests streamed, with the key, every beta 0 for base and the slider's for VAS.
    assert len(bodies) == 2 and all(b["stream"] is True for b in bodies)
    by_betas = {json.dumps(b["vas"]["beta"], sort_keys=True): b for b in bodies}
    assert set(by_betas) == {json.dumps({"sentiment": 0, "sunny": 0}),
                             json.dumps({"sentiment": 6, "sunny": 0})}
    assert all(b["messages"] == [{"role": "user", "content": PROMPT}] and b["max_tokens"] == 40
               for b in bodies)

    for pane in ("base", "vas"):
        assert page.locator(f"#{pane}-out .error").count() == 0, page.inner_text(f"#{pane}-out")
    base_text, vas_text = page.inner_text("#base-out"), page.inner_text("#vas-out")
    assert base_text.strip() and vas_text.strip()

    # The page shows exactly what the server streamed: the text, and one span per token with
    # its shift; the cost line is the final chunk's report.
    streamed = {}
    for request, response in recorder.exchanges[seen:]:
        beta = json.loads(request)["vas"]["beta"]["sentiment"]
        streamed["vas" if beta else "base"] = _streamed(response)
    assert set(streamed) == {"base", "vas"}
    for pane, (text, shifts, final) in streamed.items():
        spans = page.locator(f"#{pane}-out span.tok")
        assert "".join(spans.all_text_contents()) == text
        assert [float(s) for s in spans.evaluate_all("els => els.map(e => e.dataset.shift)")] == \
            pytest.approx(shifts)
        cost = page.inner_text(f"#{pane}-cost")
        report = final["vas"]
        assert f"{report['api_calls']} API calls" in cost and f"mode {report['mode']}" in cost
        billed = report["usage"]
        assert f"billed {billed['prompt_tokens']} prompt + {billed['completion_tokens']} completion" in cost
        assert (f"${report['cost_usd']:.6f}" if report["cost_usd"] is not None else "cost n/a") in cost
    # Beta 0 pushes nothing; at beta 6 VADER of the prefix differs among some step's top-k
    # candidates in any answer of a few words (a sentiment word among 20 candidates), so
    # some token carries a push and is shaded.
    assert page.locator("#base-out .shaded").count() == 0
    assert set(streamed["base"][1]) == {0.0}
    assert page.locator("#vas-out .shaded").count() == sum(s != 0 for s in streamed["vas"][1]) > 0

    shot = DOCS_SHOT if os.environ.get("VAS_SCREENSHOT") == "1" else tmp_path / "playground.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_playground_shows_the_servers_error_in_the_pane(app_url, browser):
    # No key: the server answers 401 with an OpenAI error body, and each pane shows its message.
    # (A wrong key gets the same 401; the point here is the page's error path.)
    page = browser.new_page()
    page.goto(app_url[0] + "/")
    page.locator(".beta-slider").first.wait_for()
    page.fill("#key", "wrong-key-kept")
    page.reload()  # the key field survives a reload (localStorage), so a user types it once
    assert page.input_value("#key") == "wrong-key-kept"
    page.fill("#key", "")
    page.click("#run")
    page.wait_for_selector("#base-out[data-done='1']")
    page.wait_for_selector("#vas-out[data-done='1']")
    for pane in ("base", "vas"):
        err = page.locator(f"#{pane}-out .error")
        assert err.count() == 1
        assert err.inner_text().startswith("error: ") and len(err.inner_text()) > len("error: ")
    assert page.inner_text("#vas-cost") == ""
    page.close()


def test_playground_shows_a_spent_budget_in_the_pane(app_url, browser):
    # Whether the server refuses up front (429; what it does today, as the first call's
    # reservation already exceeds the cap) or ends the stream with an error event, the pane
    # shows the budget error's message.
    url, recorder = app_url
    page = browser.new_page()
    seen = len(recorder.exchanges)
    page.goto(url + "/")
    page.locator(".beta-slider").first.wait_for()
    page.fill("#key", SPENT_KEY)
    page.fill("#max-tokens", "8")
    page.click("#run")
    page.wait_for_selector("#base-out[data-done='1']")
    page.wait_for_selector("#vas-out[data-done='1']")
    for pane in ("base", "vas"):
        err = page.locator(f"#{pane}-out .error")
        assert err.count() == 1, page.inner_text(f"#{pane}-out")
        assert "budget" in err.inner_text().lower()
    sent = recorder.exchanges[seen:]
    assert len(sent) == 2 and all(_error_of(body)["type"] == "insufficient_quota" for _, body in sent)
    page.close()
