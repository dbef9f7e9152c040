"""The playground in a real browser: `marimo edit` and `marimo run` on loopback, headless Debian Chromium.

Needs Debian's chromium and chromium-driver (.ci/run installs them and sets COPD_REQUIRE_BROWSER=1, so that CI
fails rather than skips without them). Screenshots land in test-artifacts/.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from playground_browser import (  # noqa: E402
    BUSY,
    DEEP_QUERY,
    browser_available,
    charts,
    chromium,
    click_button,
    deep,
    marimo_server,
    outputs_text,
    results_row,
    settled,
    slider,
    wait_for,
)

ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.skipif(not browser_available() and not os.environ.get("COPD_REQUIRE_BROWSER"),
                                reason="Debian chromium and chromium-driver are not installed")


def test_edit_renders_on_open_and_a_knob_redraws_and_goes_into_the_url(tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with marimo_server(tmp_path) as url, chromium() as driver:
        driver.get(url + "/?styles=4&hide=merge")
        assert wait_for(lambda: settled(driver), 120), "the charts did not render"
        text = outputs_text(driver)
        assert "Traceback" not in text and "Error" not in text and "Not a valid setting" not in text
        assert "Merge and baselines" not in text and "Simulator mechanisms" in text  # hide=merge
        knob = slider(driver, "styles (drift)")
        assert knob.get_attribute("aria-valuenow") == "4"  # the URL set the knob
        driver.save_screenshot(str(ARTIFACTS / "playground_open.png"))
        before, drawn = results_row(driver), charts(driver)
        driver.execute_script("arguments[0].focus()", knob)
        knob.send_keys("\ue014")  # the right arrow: one step up
        assert wait_for(lambda: "styles=5" in driver.current_url, 30), driver.current_url
        assert wait_for(lambda: results_row(driver) != before and settled(driver), 60), "nothing was redrawn"
        assert charts(driver) != drawn  # the charts are new elements: drawn again
        assert "hide=merge" in driver.current_url
        driver.save_screenshot(str(ARTIFACTS / "playground_after_knob.png"))
        driver.execute_script("arguments[0].scrollIntoView()", charts(driver)[0])  # the redrawn charts themselves
        driver.save_screenshot(str(ARTIFACTS / "playground_after_knob_charts.png"))


def test_run_mode_shows_the_app_without_code(tmp_path):
    with marimo_server(tmp_path, mode="run") as url, chromium() as driver:
        driver.get(url + "/?preset=no+drift")
        assert wait_for(lambda: settled(driver), 120), "the charts did not render"
        assert slider(driver, "styles (drift)").get_attribute("aria-valuenow") == "1"  # the preset
        assert not deep(driver, ".cm-editor")  # no code editors in an app


def test_a_refused_setting_in_the_url_is_named_in_the_page(tmp_path):
    with marimo_server(tmp_path) as url, chromium() as driver:
        driver.get(url + "/?conflict=0.75")  # with shared skill 0.5: more than the rules have
        assert wait_for(lambda: "Not a valid setting" in outputs_text(driver), 60)
        assert "conflict = 0.75 is not allowed" in outputs_text(driver) and "Traceback" not in outputs_text(driver)


def test_the_vlm_world_runs_from_its_button_and_a_second_press_reads_the_saved_run(tmp_path):
    """The shipped tiny VLM, at the smallest schedule: the button starts it, the results table comes, and after a
    reload the same setting is read back from runs/playground/ (its checkpoints) instead of trained again."""
    setting = "/?world=vlm&cycles=1&rl_steps=1&opd_steps=1&baselines=experts"
    with marimo_server(tmp_path) as url, chromium() as driver:
        driver.get(url + setting)
        assert wait_for(lambda: "Press run on the VLM" in outputs_text(driver), 60)
        assert wait_for(lambda: click_button(driver, "run on the VLM"), 30)
        assert wait_for(lambda: "expert:text" in outputs_text(driver) and not deep(driver, BUSY), 300, step=1)
        first = [line for line in outputs_text(driver).splitlines() if line.startswith("copd\t")]
        assert list((tmp_path / "runs" / "playground").glob("*/checkpoints/seed0.pt"))
        driver.get(url + setting)  # a new session: the button again, and the saved run comes back at once
        assert wait_for(lambda: click_button(driver, "run on the VLM"), 60)
        assert wait_for(lambda: "expert:text" in outputs_text(driver) and not deep(driver, BUSY), 60, step=0.5)
        assert [line for line in outputs_text(driver).splitlines() if line.startswith("copd\t")] == first


def test_the_token_inspector_follows_its_edge_and_the_map_button_draws_the_two_knob_map(tmp_path):
    with marimo_server(tmp_path) as url, chromium() as driver:
        driver.get(url + "/?cycles=2")
        assert wait_for(lambda: settled(driver), 120)
        eager = len(charts(driver))
        for area in deep(driver, ".output-area"):  # bring each output into view: a lazy chart renders then
            driver.execute_script("arguments[0].scrollIntoView()", area)
            wait_for(lambda: not deep(driver, BUSY), 10)
        assert wait_for(lambda: len(charts(driver)) >= eager + 5, 60), "the lazy charts did not render"
        drawn = charts(driver)
        chosen = driver.execute_script(DEEP_QUERY.replace("return found;", """
            const select = found.find(s => [...s.options].some(o => o.text === 'image<-text'));
            select.value = [...select.options].find(o => o.text === 'image<-text').value;
            select.dispatchEvent(new Event('change', {bubbles: true}));
            return true;"""), "select")
        assert chosen and wait_for(lambda: charts(driver) != drawn and not deep(driver, BUSY), 60)  # a new strip
        assert wait_for(lambda: click_button(driver, "map where CoPD wins"), 30)
        assert wait_for(lambda: "CoPD minus the best other method" in outputs_text(driver) and not deep(driver, BUSY),
                        180, step=0.5)
        driver.save_screenshot(str(ARTIFACTS / "playground_bottom.png"))


def test_a_run_that_is_refused_is_one_line_in_the_page(tmp_path):
    with marimo_server(tmp_path) as url, chromium() as driver:
        driver.get(url + "/?world=vlm&model=" + str(tmp_path / "no-such-model"))
        assert wait_for(lambda: click_button(driver, "run on the VLM"), 60)
        assert wait_for(lambda: "The run stopped:" in outputs_text(driver), 60)
        text = outputs_text(driver)
        assert "vlm.model" in text and "no-such-model" in text and "Traceback" not in text
