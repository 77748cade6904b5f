// Loads wsgate's demo page over https in Debian's headless Chromium, sends
// COUNT messages to /echo with the page's own client, and prints one JSON
// line: the echoes heard and the protocol the page was loaded over.
//
// Usage: node echo.mjs https://127.0.0.1:PORT/ CERT.pem [COUNT]
// (run by ../browser.rs; `npm ci` in this folder first). CERT.pem is the
// gateway's certificate: Chromium trusts it by the SHA-256 of its public
// key, so nothing is installed in a trust store.

import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, certFile, countArg = '5'] = process.argv.slice(2);
if (!url || !certFile) {
  console.error('usage: node echo.mjs URL CERT.pem [COUNT]');
  process.exit(2);
}
const count = Number(countArg);
const spki = createHash('sha256')
  .update(new X509Certificate(readFileSync(certFile)).publicKey.export({ type: 'spki', format: 'der' }))
  .digest('base64');

const profile = mkdtempSync(join(tmpdir(), 'wsgate-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  timeout: 30_000,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--no-first-run',
    `--ignore-certificate-errors-spki-list=${spki}`,
  ],
});
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.setDefaultTimeout(10_000);
  await page.goto(url);
  const logged = (line) =>
    page.waitForFunction(
      (line) => document.getElementById('log').textContent.split('\n').includes(line),
      line,
    );
  await logged('/echo: open');
  for (let i = 1; i <= count; i++) {
    await page.fill('#text', `hello ${i}`);
    await page.click('#echo');
    await logged(`/echo <- hello ${i}`);
  }
  const log = await page.locator('#log').textContent();
  const echoes = log
    .split('\n')
    .filter((line) => line.startsWith('/echo <- '))
    .map((line) => line.slice('/echo <- '.length));
  const protocol = await page.evaluate(
    () => performance.getEntriesByType('navigation')[0]?.nextHopProtocol ?? '',
  );
  console.log(JSON.stringify({ echoes, protocol }));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
