// The broker manager's page: Sign-In with Ethereum through the browser
// wallet (EIP-1193), then the daemon's figures from /manager/api/, a
// release through the daemon, and a top-up sent from the wallet.
//
// Amounts are BigInt wei throughout: never a float.
"use strict";

const $ = (id) => document.getElementById(id);
const WEI_PER_ETH = 10n ** 18n;

/** The signed-in session: address, csrf, expires_at, chain_id, rpc_url. */
let session = null;
/** The last status read (for the operator address). */
let lastStatus = null;
let refreshTimer = null;

// ---- amounts ---------------------------------------------------------

/** `wei` (BigInt) as an exact decimal ETH string. */
function formatEther(wei) {
  const negative = wei < 0n;
  if (negative) wei = -wei;
  const whole = wei / WEI_PER_ETH;
  const fraction = (wei % WEI_PER_ETH).toString().padStart(18, "0").replace(/0+$/, "");
  return (negative ? "-" : "") + whole.toString() + (fraction ? "." + fraction : "");
}

/** A decimal ETH amount typed by a person, as BigInt wei; throws with a message. */
function parseEther(text) {
  const t = text.trim();
  const m = /^(\d+)(?:\.(\d{1,18}))?$/.exec(t) || /^()\.(\d{1,18})$/.exec(t);
  if (!m) throw new Error(`"${text}" is not an amount in ETH (digits, at most 18 after the point)`);
  const wei = BigInt(m[1] || "0") * WEI_PER_ETH + BigInt((m[2] || "").padEnd(18, "0"));
  if (wei === 0n) throw new Error("the amount must be more than zero");
  return wei;
}

// ---- talking to the server -------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = {};
  if (options.body) headers["content-type"] = "application/json";
  const method = options.method || "GET";
  if (method !== "GET" && session) headers["x-csrf-token"] = session.csrf;
  const response = await fetch(path, { ...options, method, headers, credentials: "same-origin" });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!response.ok) {
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    // The browser drops the cookie when the session ends, so the server
    // then sees none: say what happened rather than "not signed in".
    if (response.status === 401 && session) {
      signedOut(message === "not signed in" ? "Your session ended: sign in again." : message);
    }
    throw new ApiError(response.status, message);
  }
  return body;
}

// ---- the wallet (EIP-1193) -------------------------------------------

function wallet() {
  if (!window.ethereum) {
    throw new Error("No browser wallet found: install or enable one (an EIP-1193 wallet such as a browser extension).");
  }
  return window.ethereum;
}

/** A wallet error in words; 4001 is the person saying no. */
function walletMessage(e) {
  if (e && e.code === 4001) return "You rejected the request in your wallet: nothing was done.";
  if (e && e.code === 4902) return "Your wallet does not know the broker's chain.";
  if (e && e.code === -32002) return "Your wallet already has a request waiting: open it.";
  return (e && e.message) || String(e);
}

function utf8Hex(text) {
  return "0x" + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- messages --------------------------------------------------------

function notice(text, kind = "info") {
  const el = $("notice");
  el.textContent = text;
  el.className = "notice" + (kind === "error" ? " error" : "");
  el.hidden = !text;
}

function result(id, text, kind) {
  const el = $(id);
  el.textContent = text;
  el.className = kind || "";
}

// ---- login and logout ------------------------------------------------

async function login() {
  const button = $("login-button");
  button.disabled = true;
  notice("Waiting for your wallet…");
  try {
    const w = wallet();
    const [account] = await w.request({ method: "eth_requestAccounts" });
    if (!account) throw new Error("Your wallet gave no account.");
    const challenge = await api(`/manager/api/login?address=${encodeURIComponent(account)}`);
    notice("Sign the sign-in message in your wallet…");
    const signature = await w.request({ method: "personal_sign", params: [utf8Hex(challenge.message), account] });
    session = await api("/manager/api/login", {
      method: "POST",
      body: JSON.stringify({ message: challenge.message, signature }),
    });
    notice("");
    await showDashboard();
  } catch (e) {
    session = null;
    notice(e instanceof ApiError ? e.message : walletMessage(e), "error");
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  try {
    await api("/manager/api/logout", { method: "POST" });
  } catch (e) {
    // The session is over either way.
  }
  signedOut("You are logged out.");
}

function signedOut(message) {
  session = null;
  lastStatus = null;
  clearInterval(refreshTimer);
  $("dashboard").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  notice(message, message && message.includes("logged out") ? "info" : "error");
}

// ---- the dashboard ---------------------------------------------------

async function showDashboard() {
  $("login").hidden = true;
  $("who").hidden = false;
  $("who-address").textContent = session.address;
  $("dashboard").hidden = false;
  await refresh();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(() => refresh().catch(() => {}), 10000);
}

function when(secs) {
  if (secs == null) return "never";
  return new Date(Number(secs) * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function refresh() {
  const [status, allocations, recent] = await Promise.all([
    api("/manager/api/status"),
    api("/manager/api/allocations"),
    api("/manager/api/requests"),
  ]);
  lastStatus = status;
  showStatus(status);
  showAllocations(allocations);
  showRecent(recent);
}

function showStatus(s) {
  const w = s.wallet;
  $("network").textContent = `chain ${session.chain_id}` + (s.chain ? `, block ${s.chain.head}` : "");
  if (w) {
    $("operator-address").textContent = w.address;
    const balance = BigInt(w.balance_wei);
    $("balance").textContent = formatEther(balance);
    const low = $("low-balance");
    low.hidden = !w.low;
    low.textContent = w.low
      ? `The balance is below ${formatEther(BigInt(w.low_balance_wei))} ETH: the broker may soon fail to answer requests. Top it up.`
      : "";
  } else {
    $("operator-address").textContent = "unknown (the daemon could not read the chain)";
    $("balance").textContent = "–";
  }
  const poll = s.last_poll;
  $("daemon-line").textContent = `version ${s.version}` +
    (poll ? `; last poll ${when(poll.finished_at)}${poll.error ? ` failed: ${poll.error}` : ""}` : "");
  $("pool-line").textContent = `${s.used_allocations} of ${s.total_allocations} prefixes of ${s.upstream_prefix} in use ` +
    `(/${s.allocation_size} each): ${s.active_peers} active, ${s.idle_peers} idle, ${s.never_connected_peers} never connected.`;
  const ndp = s.ndp;
  $("ndp-line").textContent = ndp
    ? `${ndp.attached ? "Attached" : "Not attached"}${ndp.interface ? ` on ${ndp.interface}` : ""}` +
      `${ndp.attachment ? ` (${ndp.attachment})` : ""}, ${ndp.prefixes} prefix(es) answered.`
    : "No NDP responder is pinned.";
  const counters = $("ndp-counters");
  counters.replaceChildren();
  if (ndp) {
    for (const [name, label] of [["seen", "Solicitations seen"], ["answered", "Answered"], ["not_ours", "Not ours"], ["invalid", "Invalid"], ["failed", "Failed"]]) {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = String(ndp.counters[name]);
      div.append(dt, dd);
      counters.append(div);
    }
  }
  const parts = (s.contracts || []).map((c) => {
    const r = c.requests || {};
    const counts = Object.entries(r).map(([k, v]) => `${v} ${k.replace(/_/g, " ")}`).join(", ");
    return `${c.role} ${c.address}: ${counts || "none"}`;
  });
  $("requests-line").textContent = parts.join("; ");
}

const STATE_NAMES = { active: "active", idle: "idle", never_connected: "never connected" };

function showAllocations(list) {
  const body = $("allocations").tBodies[0];
  body.replaceChildren();
  if (!list.length) {
    const row = body.insertRow();
    cell(row, "No allocations.", "empty").colSpan = 6;
    return;
  }
  for (const a of list) {
    const row = body.insertRow();
    const state = document.createElement("span");
    state.className = "state " + (a.status || "");
    state.textContent = STATE_NAMES[a.status] || "unknown";
    row.insertCell().append(state);
    cell(row, a.prefix, "mono");
    cell(row, a.nft_contract, "mono");
    // Which watched contract the request came from: the primary or a legacy one.
    const watched = ((lastStatus && lastStatus.contracts) || []).find((c) => c.address.toLowerCase() === a.contract.toLowerCase());
    cell(row, `#${a.request_id} (${watched ? watched.role : "contract"})`, "mono").title = `requests contract ${a.contract}`;
    cell(row, when(a.last_seen_at));
    const button = document.createElement("button");
    button.type = "button";
    button.className = "danger";
    button.textContent = "Release…";
    button.setAttribute("aria-label", `Release ${a.prefix}`);
    button.addEventListener("click", () => confirmRelease(a));
    row.insertCell().append(button);
  }
}

const EVENT_NAMES = {
  allocated: "allocated", rotated: "rotated", rejected: "rejected",
  answered: "answered", released: "released",
};

function showRecent(entries) {
  const body = $("recent").tBodies[0];
  body.replaceChildren();
  if (!entries.length) {
    const row = body.insertRow();
    cell(row, "Nothing yet.", "empty").colSpan = 4;
    return;
  }
  for (const e of entries) {
    const row = body.insertRow();
    cell(row, when(e.at));
    cell(row, EVENT_NAMES[e.event] || e.event);
    cell(row, e.request_id != null ? `#${e.request_id}` : "–", "mono");
    const detail = e.reason || e.prefix || e.transaction || "";
    cell(row, detail, e.reason ? "" : "mono hash");
  }
}

// ---- release -----------------------------------------------------------

function confirmRelease(a) {
  const dialog = $("confirm");
  $("confirm-prefix").textContent = a.prefix;
  $("confirm-request").textContent = `#${a.request_id}`;
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue === "release") release(a);
  };
  dialog.showModal();
  $("confirm-cancel").focus();
}

function describeOnChain(o) {
  switch (o.outcome) {
    case "sent": return `releaseAllocation sent in ${o.transaction}`;
    case "not_owed": return "nothing to release on chain (a legacy contract)";
    case "already_released": return "already released on chain";
    case "superseded": return `not released on chain: the NFT's newer request ${o.current_request} decides`;
    case "refused": return `refused by the contract: ${o.reason}`;
    case "deferred": return `not sent yet, retried every poll: ${o.reason}`;
    default: return o.outcome;
  }
}

async function release(a) {
  result("release-result", `Releasing ${a.prefix}…`);
  try {
    const r = await api(`/manager/api/allocations/${a.prefix}`, { method: "DELETE" });
    const removed = [r.peer_removed && "peer", r.route_removed && "route", r.ndp_entry_removed && "NDP entry"].filter(Boolean);
    result("release-result",
      `Released ${r.prefix}: ${describeOnChain(r.on_chain)}; removed ${removed.length ? removed.join(", ") : "nothing from the kernel"}.`,
      "success");
  } catch (e) {
    result("release-result", `The release failed: ${e.message}`, "error");
  }
  await refresh().catch(() => {});
}

// ---- top-up ------------------------------------------------------------

async function switchChain(w) {
  const chainId = "0x" + BigInt(session.chain_id).toString(16);
  try {
    await w.request({ method: "wallet_switchEthereumChain", params: [{ chainId }] });
  } catch (e) {
    if (!e || e.code !== 4902) throw e;
    if (!session.rpc_url) {
      throw new Error(`Your wallet does not know chain ${session.chain_id}: add it to the wallet yourself (the broker's RPC endpoint is not shown here, as it may hold a key).`);
    }
    await w.request({
      method: "wallet_addEthereumChain",
      params: [{
        chainId,
        chainName: `blockhost-broker chain ${session.chain_id}`,
        nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
        rpcUrls: [session.rpc_url],
      }],
    });
  }
  const now = await w.request({ method: "eth_chainId" });
  if (BigInt(now) !== BigInt(session.chain_id)) {
    throw new Error(`Your wallet is on chain ${BigInt(now)}, not the broker's chain ${session.chain_id}: switch it and try again.`);
  }
}

async function receipt(w, hash) {
  for (let i = 0; i < 300; i++) {
    const r = await w.request({ method: "eth_getTransactionReceipt", params: [hash] });
    if (r) return r;
    await new Promise((done) => setTimeout(done, 1000));
  }
  throw new Error(`Transaction ${hash} is not mined after 5 minutes: check it in your wallet.`);
}

async function topUp(event) {
  event.preventDefault();
  const button = $("topup-button");
  let wei;
  try {
    wei = parseEther($("topup-amount").value);
  } catch (e) {
    result("topup-result", e.message, "error");
    $("topup-amount").focus();
    return;
  }
  const to = lastStatus && lastStatus.wallet && lastStatus.wallet.address;
  if (!to) {
    result("topup-result", "The operator address is unknown (the daemon has not read the chain): try again later.", "error");
    return;
  }
  button.disabled = true;
  try {
    const w = wallet();
    const [from] = await w.request({ method: "eth_requestAccounts" });
    result("topup-result", `Switching your wallet to chain ${session.chain_id}…`);
    await switchChain(w);
    result("topup-result", `Confirm sending ${formatEther(wei)} ETH in your wallet…`);
    const hash = await w.request({
      method: "eth_sendTransaction",
      params: [{ from, to, value: "0x" + wei.toString(16) }],
    });
    result("topup-result", `Sent in ${hash}; waiting for it to be mined…`);
    const r = await receipt(w, hash);
    if (BigInt(r.status) !== 1n) throw new Error(`Transaction ${hash} failed on chain.`);
    const balance = BigInt(await w.request({ method: "eth_getBalance", params: [to, "latest"] }));
    $("balance").textContent = formatEther(balance);
    result("topup-result", `Mined in block ${BigInt(r.blockNumber)}. The operator balance is now ${formatEther(balance)} ETH.`, "success");
    $("topup-amount").value = "";
  } catch (e) {
    result("topup-result", walletMessage(e), "error");
  } finally {
    button.disabled = false;
  }
}

// ---- start -------------------------------------------------------------

async function start() {
  $("login-button").addEventListener("click", login);
  $("logout").addEventListener("click", logout);
  $("topup").addEventListener("submit", topUp);
  try {
    session = await api("/manager/api/session");
    await showDashboard();
  } catch (e) {
    session = null;
    $("login").hidden = false;
    if (e.status !== 401 || e.message !== "not signed in") notice(e.message, "error");
  }
}

// For tests of the amounts (no effect on the page).
window.brokerManager = { formatEther, parseEther };

start();
