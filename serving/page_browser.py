"""The search page (serving/page/) in headless Chromium, for its test, its
benchmark and the README's screenshot: Debian's `chromium` and
`chromium-driver` (`make test` installs them) driven through selenium (the
test extra).

  with chromium() as driver:
    driver.get(server_url + "/?id=train/5")
    wait_ready(driver)
"""

import contextlib
import shutil
from typing import Iterator, List, Tuple

WAIT_SECONDS = 60
POLL_SECONDS = 0.02  # how often a wait looks again: the page answers in tens of ms


class NoBrowser(RuntimeError):
  """Chromium or chromedriver is not installed."""


@contextlib.contextmanager
def chromium(window: Tuple[int, int] = (1280, 900)) -> Iterator:
  """A headless Chromium WebDriver, quit on exit; NoBrowser naming what to install."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
  if not (binary and driver_path):
    raise NoBrowser(
        "Chromium or chromedriver is missing: `make test` installs Debian's chromium "
        "and chromium-driver (apt-get install chromium chromium-driver)"
    )
  options = webdriver.ChromeOptions()
  options.binary_location = binary
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
    options.add_argument(arg)
  options.add_argument(f"--window-size={window[0]},{window[1]}")
  driver = webdriver.Chrome(service=Service(driver_path), options=options)
  try:
    yield driver
  finally:
    driver.quit()


def stale(driver) -> None:
  """Marks the page's state stale before an action whose answer comes
  later (a file read, a search), so `wait_ready` waits for that answer."""
  driver.execute_script("document.body.dataset.state = 'stale'")


def wait_ready(driver, state: str = "ready") -> None:
  """Waits until the page has finished what it was doing (body data-state)."""
  from selenium.webdriver.support.ui import WebDriverWait

  WebDriverWait(driver, WAIT_SECONDS, poll_frequency=POLL_SECONDS).until(
      lambda d: d.find_element("tag name", "body").get_attribute("data-state") == state
  )


def images_loaded(driver, selector: str) -> List[int]:
  """Scrolls each image `selector` finds into view (the page loads them
  lazily, as they come into view), waits for them to load, and returns
  their natural widths (0: failed)."""
  from selenium.webdriver.support.ui import WebDriverWait

  script = f"return [...document.querySelectorAll('{selector}')]"
  driver.execute_script(script.replace("return ", "") + ".forEach(i => i.scrollIntoView())")
  driver.execute_script("window.scrollTo(0, 0)")
  WebDriverWait(driver, WAIT_SECONDS, poll_frequency=POLL_SECONDS).until(
      lambda d: d.execute_script(script + ".every(i => i.complete)")
  )
  return driver.execute_script(script + ".map(i => i.naturalWidth)")


def results(driver) -> List[dict]:
  """[{id, cls, score}] of the result cards shown, in order."""
  return driver.execute_script(
      """return [...document.querySelectorAll('#results .result')].map(r => ({
        id: r.querySelector('.id').textContent,
        cls: r.querySelector('.class').textContent,
        score: parseFloat(r.querySelector('.score').textContent)}));"""
  )
