// zkv approval pages. Served from the gateway itself (CSP: script-src 'self'); no cookies: a
// POST carries the page's CSRF value in a header, which a cross-site page cannot set.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="zkv-csrf"]').content;
  const status = document.getElementById("status");
  const base = location.pathname.replace(/\/+$/, "");
  const b64u = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const bytes = (s) => {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  };
  async function post(path, body) {
    const r = await fetch(base + path, {
      method: "POST", credentials: "omit", cache: "no-store",
      headers: { "Content-Type": "application/json", "X-ZKV-CSRF": csrf },
      body: JSON.stringify(body || {}),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.message || "refused");
    return data;
  }
  // The page of a batch decides the ticked requests; an approval page its one request.
  function picked() {
    if (document.body.dataset.page !== "batch") return {};
    const ids = Array.from(document.querySelectorAll('input[name="pick"]:checked'))
      .map((box) => box.value);
    if (!ids.length) throw new Error("no request ticked");
    return { requests: ids };
  }
  function buttons(disabled) {
    document.querySelectorAll("button").forEach((b) => { b.disabled = disabled; });
  }
  function say(text) { status.textContent = text; }
  async function enrol() {
    const o = await post("/options");
    o.challenge = bytes(o.challenge);
    o.user.id = bytes(o.user.id);
    (o.excludeCredentials || []).forEach((c) => { c.id = bytes(c.id); });
    const c = await navigator.credentials.create({ publicKey: o });
    await post("/finish", {
      id: c.id, rawId: b64u(c.rawId), type: c.type,
      response: {
        clientDataJSON: b64u(c.response.clientDataJSON),
        attestationObject: b64u(c.response.attestationObject),
      },
    });
    return "Passkey added. You can close this page.";
  }
  async function approve() {
    const chosen = picked();
    const o = await post("/options");
    o.challenge = bytes(o.challenge);
    (o.allowCredentials || []).forEach((c) => { c.id = bytes(c.id); });
    const a = await navigator.credentials.get({ publicKey: o });
    const r = await post("/decide", {
      ...chosen,
      verdict: "approve",
      credential: {
        id: a.id, rawId: b64u(a.rawId), type: a.type,
        response: {
          clientDataJSON: b64u(a.response.clientDataJSON),
          authenticatorData: b64u(a.response.authenticatorData),
          signature: b64u(a.response.signature),
          userHandle: a.response.userHandle ? b64u(a.response.userHandle) : null,
        },
      },
    });
    return "Approved (" + r.state + "). The server unlocks now.";
  }
  async function approveTotp() {
    const code = document.getElementById("totp").value.trim();
    const r = await post("/decide", { ...picked(), verdict: "approve", totp: code });
    return "Approved (" + r.state + "). The server unlocks now.";
  }
  async function deny() {
    const r = await post("/decide", { ...picked(), verdict: "deny" });
    return "Denied (" + r.state + "). The server will not get the key.";
  }
  function wire(id, action) {
    const button = document.getElementById(id);
    if (!button) return;
    button.addEventListener("click", async () => {
      buttons(true);
      say("Working…");
      try {
        say(await action());
      } catch (e) {
        say("Not done: " + (e && e.message ? e.message : "refused") + ".");
        buttons(false);
      }
    });
  }
  wire("enrol", enrol);
  wire("approve", approve);
  wire("approve-totp", approveTotp);
  wire("deny", deny);
})();
