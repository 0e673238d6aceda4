// Through the Switchboard gateway in a real browser: sign in (a wrong password first), open a
// session type from the landing page, follow the waiting page to the Xpra HTML5 client, and wait
// until that client has connected to the session's Xpra server over the gateway's WebSocket (with
// the sign-in cookie). Headless Debian chromium, driven by playwright-core. Exits non-zero on any
// failure.
//
// Usage: node gateway.mjs BASE_URL USER PASSWORD TYPE SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [base, user, password, type, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  // The test's certificate is self-signed for 127.0.0.1.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/`);
  await page.waitForURL(/\/login$/);
  await page.fill("input[name=user]", user);
  await page.fill("input[name=password]", "wrong");
  await page.click("button[type=submit]");
  await page.locator("[role=alert]").waitFor({ timeout: 15000 });
  await page.fill("input[name=user]", user);
  await page.fill("input[name=password]", password);
  await page.click("button[type=submit]");
  await page.waitForURL(new RegExp(`${base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}/$`));
  await page.screenshot({ path: `${shots}/1-landing.png`, fullPage: true });
  await page.click(`a[href="/start/${type}"]`);
  // The waiting page sends the browser on to the HTML5 client once the session is ready.
  await page.waitForURL(/\/client\/index\.html/, { timeout: 60000 });
  await page.waitForFunction(() => window.client && window.client.connected === true, null, { timeout: 60000 });
  await page.waitForTimeout(1000);
  await page.screenshot({ path: `${shots}/2-session.png` });
  console.log("connected", type);
} finally {
  await browser.close();
}
