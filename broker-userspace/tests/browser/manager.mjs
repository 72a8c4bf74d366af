// The broker's web manager in a real browser: Debian's chromium, headless,
// driven by playwright-core, against the daemon that tests/manager_browser.rs
// runs in broker-lab's lab. The wallet is a test EIP-1193 provider injected
// into the page (addInitScript + exposeFunction): it signs with anvil's own
// personal_sign on its unlocked dev accounts and sends transactions through
// anvil, so no key ever passes through here.
//
// Input, all in the environment: MANAGER_URL, RPC_URL, CHAIN_ID, ADMIN and
// STRANGER (anvil dev accounts), PREFIX (the allocation to release),
// TOPUP_WEI, SESSION_SECS, SCREENSHOT_DIR. Output: one JSON object on the
// last line of stdout; exit status 0 only when every scenario passed.

import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const MANAGER = env("MANAGER_URL");
const RPC = env("RPC_URL");
const CHAIN_ID = BigInt(env("CHAIN_ID"));
const ADMIN = env("ADMIN").toLowerCase();
const STRANGER = env("STRANGER").toLowerCase();
const PREFIX = env("PREFIX");
const TOPUP_WEI = BigInt(env("TOPUP_WEI"));
const SESSION_SECS = Number(env("SESSION_SECS"));
const SHOTS = env("SCREENSHOT_DIR");
const WEI_PER_ETH = 10n ** 18n;

const report = { scenarios: [] };

function formatEther(wei) {
  const fraction = (wei % WEI_PER_ETH).toString().padStart(18, "0").replace(/0+$/, "");
  return (wei / WEI_PER_ETH).toString() + (fraction ? "." + fraction : "");
}

let rpcId = 0;
async function rpc(method, params = []) {
  const response = await fetch(RPC, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params }),
  });
  const body = await response.json();
  if (body.error) {
    const e = new Error(`anvil ${method}: ${body.error.message}`);
    e.code = body.error.code;
    throw e;
  }
  return body.result;
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

// ---- the test wallet ---------------------------------------------------

/** In the page: window.ethereum forwarding every request to __testWallet. */
function installProvider() {
  const listeners = {};
  window.ethereum = {
    isTestWallet: true,
    async request({ method, params }) {
      const answer = JSON.parse(await window.__testWallet(JSON.stringify({ method, params: params || [] })));
      if (answer.error) {
        const e = new Error(answer.error.message);
        e.code = answer.error.code;
        throw e;
      }
      return answer.result;
    },
    on(event, f) { (listeners[event] ||= []).push(f); },
    removeListener() {},
  };
}

const rejected = (what) => ({ error: { code: 4001, message: `User rejected ${what}` } });

/**
 * A wallet holding `account`. Options: `reject` (methods the person says
 * no to), `chains` (chain ids it knows; it is on the first), `stuckOn` (a
 * chain it claims to switch from but never leaves). Records what it was
 * asked in `asked`.
 */
function testWallet({ account, reject = [], chains = [CHAIN_ID], stuckOn = null }) {
  const known = new Set(chains.map(String));
  let current = stuckOn ?? chains[0];
  const asked = [];
  async function handle({ method, params }) {
    asked.push(method);
    if (reject.includes(method)) return rejected(method);
    switch (method) {
      case "eth_requestAccounts":
      case "eth_accounts":
        return { result: [account] };
      case "eth_chainId":
        return { result: "0x" + BigInt(current).toString(16) };
      case "wallet_switchEthereumChain": {
        const id = BigInt(params[0].chainId);
        if (!known.has(String(id))) {
          return { error: { code: 4902, message: `Unrecognized chain ID ${params[0].chainId}` } };
        }
        if (stuckOn == null) current = id;
        return { result: null };
      }
      case "wallet_addEthereumChain": {
        const p = params[0];
        check(p.rpcUrls && p.rpcUrls.length === 1, "wallet_addEthereumChain without an RPC URL");
        check(p.nativeCurrency && p.nativeCurrency.decimals === 18, "wallet_addEthereumChain: decimals");
        known.add(String(BigInt(p.chainId)));
        asked.push(`added ${BigInt(p.chainId)} at ${p.rpcUrls[0]}`);
        if (stuckOn == null) current = BigInt(p.chainId);
        return { result: null };
      }
      case "personal_sign": {
        check(params[1].toLowerCase() === account, `personal_sign for ${params[1]}, not ${account}`);
        return { result: await rpc("personal_sign", [params[0], account]) };
      }
      case "eth_sendTransaction": {
        const tx = params[0];
        check(tx.from.toLowerCase() === account, `a transaction from ${tx.from}`);
        check(BigInt(current) === CHAIN_ID, `a transaction sent on chain ${current}`);
        return { result: await rpc("eth_sendTransaction", [tx]) };
      }
      case "eth_getTransactionReceipt":
      case "eth_getBalance":
      case "eth_blockNumber":
        return { result: await rpc(method, params) };
      default:
        return { error: { code: 4200, message: `the test wallet does not do ${method}` } };
    }
  }
  return {
    asked,
    async expose(context) {
      await context.exposeFunction("__testWallet", async (json) => {
        try {
          return JSON.stringify(await handle(JSON.parse(json)));
        } catch (e) {
          return JSON.stringify({ error: { code: e.code ?? -32603, message: e.message } });
        }
      });
      await context.addInitScript(installProvider);
    },
  };
}

// ---- the browser ---------------------------------------------------------

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  // Off the network: only the manager and anvil are reachable anyway (the
  // broker's namespace), and nothing may be fetched by the browser itself.
  args: [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-first-run",
    "--no-pings",
    "--dns-prefetch-disable",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
  ],
});

async function newPage(wallet, viewport = { width: 1200, height: 900 }) {
  const context = await browser.newContext({ viewport });
  await wallet.expose(context);
  const page = await context.newPage();
  const foreign = [];
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.origin !== new URL(MANAGER).origin) foreign.push(r.url());
  });
  page.on("pageerror", (e) => report.page_errors = [...(report.page_errors || []), e.message]);
  await page.goto(MANAGER);
  return { context, page, foreign };
}

const notice = (page) => page.locator("#notice");

async function expectNotice(page, needle) {
  await page.waitForFunction(
    (n) => document.getElementById("notice").textContent.includes(n),
    needle,
    { timeout: 15000 },
  ).catch(async () => {
    throw new Error(`notice ${JSON.stringify(await notice(page).textContent())} lacks ${JSON.stringify(needle)}`);
  });
}

async function login(page) {
  await page.locator("#login-button").click();
  await page.locator("#dashboard").waitFor({ state: "visible", timeout: 15000 });
}

async function scenario(name, body) {
  const started = Date.now();
  try {
    await body();
    report.scenarios.push({ name, ok: true, ms: Date.now() - started });
  } catch (e) {
    report.scenarios.push({ name, ok: false, error: e.message });
  }
}

/** The message the server issued, altered as a relaying site would. */
async function tamperChallenge(page, change) {
  await page.route("**/manager/api/login?*", async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    body.message = change(body.message);
    await route.fulfill({ response, json: body });
  });
}

mkdirSync(SHOTS, { recursive: true });

await scenario("login page", async () => {
  const { page, context, foreign } = await newPage(testWallet({ account: ADMIN }));
  await page.locator("#login").waitFor({ state: "visible" });
  check(await page.title() === "blockhost-broker manager", "title");
  await page.screenshot({ path: `${SHOTS}/login.png` });
  check(foreign.length === 0, `requests elsewhere: ${foreign}`);
  await context.close();
});

await scenario("an unlisted wallet is refused", async () => {
  const { page, context } = await newPage(testWallet({ account: STRANGER }));
  await page.locator("#login-button").click();
  await expectNotice(page, "is not listed in [manager] admins");
  check(await page.locator("#dashboard").isHidden(), "dashboard shown");
  await context.close();
});

await scenario("a message for another domain is refused", async () => {
  const { page, context } = await newPage(testWallet({ account: ADMIN }));
  await tamperChallenge(page, (m) => m.replace(/^[^ ]+ wants/, "broker-manager.example wants"));
  await page.locator("#login-button").click();
  await expectNotice(page, "made for broker-manager.example");
  await context.close();
});

await scenario("a message for another chain is refused", async () => {
  const { page, context } = await newPage(testWallet({ account: ADMIN }));
  await tamperChallenge(page, (m) => m.replace(/\nChain ID: \d+\n/, "\nChain ID: 1\n"));
  await page.locator("#login-button").click();
  await expectNotice(page, `is for chain 1, and this broker's chain is ${CHAIN_ID}`);
  await context.close();
});

await scenario("a rejected signature says so", async () => {
  const { page, context } = await newPage(testWallet({ account: ADMIN, reject: ["personal_sign"] }));
  await page.locator("#login-button").click();
  await expectNotice(page, "You rejected the request in your wallet");
  await context.close();
});

let operator = null;
await scenario("the admin signs in and sees the allocation", async () => {
  const { page, context, foreign } = await newPage(testWallet({ account: ADMIN }));
  let signed = null;
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/manager/api/login")) signed = r.postData();
  });
  let loginCookie = null;
  page.on("response", async (r) => {
    if (r.url().includes("/manager/api/login?")) {
      loginCookie = (await context.cookies()).find((c) => c.name === "bhb_login");
    }
  });
  await login(page);
  check((await page.locator("#who-address").textContent()).toLowerCase() === ADMIN, "who");
  const row = page.locator("#allocations tbody tr", { hasText: PREFIX });
  await row.waitFor();
  check((await row.textContent()).includes("never connected") || (await row.textContent()).includes("active"), "state");
  operator = (await page.locator("#operator-address").textContent()).trim();
  const balance = BigInt(await rpc("eth_getBalance", [operator, "latest"]));
  const shown = (await page.locator("#balance").textContent()).trim();
  check(shown === formatEther(balance), `balance shown ${shown}, on chain ${formatEther(balance)}`);
  check((await page.locator("#ndp-counters dd").count()) === 5, "NDP counters");
  check((await page.locator("#recent tbody tr", { hasText: "answered" }).count()) >= 1, "recent requests");
  await page.screenshot({ path: `${SHOTS}/dashboard.png`, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${SHOTS}/dashboard-phone.png`, fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  check(foreign.length === 0, `requests elsewhere: ${foreign}`);

  // The same signature again, with the nonce's cookie: refused.
  check(signed && loginCookie, "no login captured");
  const other = await browser.newContext();
  await other.addCookies([{ ...loginCookie }]);
  const replay = await other.request.post(new URL("api/login", MANAGER).href, {
    data: signed,
    headers: { "content-type": "application/json" },
  });
  const answer = await replay.json();
  check(replay.status() === 403 && answer.error.includes("used already"), `replay: ${replay.status()} ${answer.error}`);
  await other.close();

  // Logout ends it.
  await page.locator("#logout").click();
  await expectNotice(page, "You are logged out");
  await page.reload();
  await page.locator("#login").waitFor({ state: "visible" });
  await context.close();
});

await scenario("release with confirmation", async () => {
  const { page, context } = await newPage(testWallet({ account: ADMIN }));
  await login(page);
  const row = page.locator("#allocations tbody tr", { hasText: PREFIX });
  await row.locator("button").click();
  const dialog = page.locator("#confirm");
  await dialog.waitFor({ state: "visible" });
  check((await dialog.textContent()).includes(PREFIX), "the dialog names the prefix");
  // Cancel first: nothing happens.
  await page.locator("#confirm-cancel").click();
  await dialog.waitFor({ state: "hidden" });
  await row.locator("button").click();
  await page.locator("#confirm-release").click();
  await page.waitForFunction(
    () => document.getElementById("release-result").className !== "",
    null,
    { timeout: 60000 },
  );
  const said = await page.locator("#release-result").textContent();
  check(said.includes(`Released ${PREFIX}: releaseAllocation sent in 0x`), said);
  check(said.includes("removed peer, route, NDP entry"), said);
  report.release_tx = /sent in (0x[0-9a-f]{64})/.exec(said)[1];
  await page.locator("#allocations tbody td.empty").waitFor();
  await context.close();
});

await scenario("a rejected top-up says so, after adding the chain", async () => {
  const wallet = testWallet({ account: ADMIN, chains: [1n], reject: ["eth_sendTransaction"] });
  const { page, context } = await newPage(wallet);
  await login(page);
  await page.locator("#topup-amount").fill("0.5");
  await page.locator("#topup-button").click();
  await page.waitForFunction(() => document.getElementById("topup-result").className === "error", null, { timeout: 15000 });
  const said = await page.locator("#topup-result").textContent();
  check(said.includes("You rejected the request in your wallet"), said);
  check(wallet.asked.includes("wallet_addEthereumChain"), `asked: ${wallet.asked}`);
  report.added_chain = wallet.asked.find((a) => a.startsWith("added "));
  await context.close();
});

await scenario("a wallet on the wrong chain is told", async () => {
  const wallet = testWallet({ account: ADMIN, chains: [CHAIN_ID, 1n], stuckOn: 1n });
  const { page, context } = await newPage(wallet);
  await login(page);
  await page.locator("#topup-amount").fill("0.5");
  await page.locator("#topup-button").click();
  await page.waitForFunction(() => document.getElementById("topup-result").className === "error", null, { timeout: 15000 });
  const said = await page.locator("#topup-result").textContent();
  check(said.includes(`is on chain 1, not the broker's chain ${CHAIN_ID}`), said);
  check(!wallet.asked.includes("eth_sendTransaction"), "sent anyway");
  await page.locator("#topup-amount").fill("1e18");
  await page.locator("#topup-button").click();
  check((await page.locator("#topup-result").textContent()).includes("is not an amount in ETH"), "1e18 accepted");
  await context.close();
});

await scenario("top-up raises the balance by exactly the amount", async () => {
  const { page, context } = await newPage(testWallet({ account: ADMIN }));
  await login(page);
  const before = BigInt(await rpc("eth_getBalance", [operator, "latest"]));
  await page.locator("#topup-amount").fill(formatEther(TOPUP_WEI));
  await page.locator("#topup-button").click();
  await page.waitForFunction(() => document.getElementById("topup-result").className !== "", null, { timeout: 60000 });
  const said = await page.locator("#topup-result").textContent();
  const after = BigInt(await rpc("eth_getBalance", [operator, "latest"]));
  check(said.includes(`The operator balance is now ${formatEther(after)} ETH`), said);
  check((await page.locator("#balance").textContent()).trim() === formatEther(after), "balance shown");
  report.topup_delta_wei = (after - before).toString();
  await context.close();
});

await scenario("an expired session goes back to the login", async () => {
  const { page, context } = await newPage(testWallet({ account: ADMIN }));
  await login(page);
  // The page refreshes every 10 s: past the session's end it is refused.
  await page.locator("#login").waitFor({ state: "visible", timeout: (SESSION_SECS + 20) * 1000 });
  await expectNotice(page, "Your session ended: sign in again");
  await context.close();
});

await browser.close();
const ok = report.scenarios.every((s) => s.ok) && !report.page_errors;
console.log(JSON.stringify(report));
process.exit(ok ? 0 : 1);
