// Signs in to the Switchboard dashboard with an admin token, drains a host through the page
// (accepting the confirmation), and saves screenshots. Headless Debian chromium, driven by
// playwright-core. Exits non-zero on any failure.
//
// Usage: node dashboard.mjs BASE_URL TOKEN HOST SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [base, token, host, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // Unsigned, the dashboard sends the browser to the sign-in page.
  await page.goto(`${base}/`);
  await page.waitForURL(/\/ui\/login$/);
  await page.fill("#token", "not-a-token");
  await page.click("#login");
  await page.waitForSelector("#error");
  await page.fill("#token", token);
  await page.click("#login");
  await page.waitForURL(/\/ui\/$/);
  // Live data arrives by htmx polling.
  const row = page.locator(`#host-${host}`);
  await row.waitFor({ timeout: 15000 });
  await page.screenshot({ path: `${shots}/1-dashboard.png`, fullPage: true });
  // Drain asks for confirmation first: dismissing it changes nothing, accepting drains.
  page.once("dialog", (d) => d.dismiss());
  await row.locator("button.drain").click();
  await page.waitForTimeout(500);
  if ((await row.getAttribute("data-admin")) !== "online") throw new Error("drained without confirmation");
  page.once("dialog", (d) => d.accept());
  await row.locator("button.drain").click();
  await page.locator("#status").filter({ hasText: `${host} is draining` }).waitFor({ timeout: 10000 });
  // The next poll shows the new admin state.
  await page.locator(`#host-${host}[data-admin="draining"]`).waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${shots}/2-drained.png`, fullPage: true });
  console.log("drained", host);
} finally {
  await browser.close();
}
